"""The checker of the plan's data files (alexnet_jax/pods/schema.py): each check accepts what it
says and refuses the rest in one line naming the file and the field."""

import math

import pytest

from alexnet_jax.pods import schema


class FileError(ValueError):
  pass


RUN = schema.table(
    {'strategy': schema.one_of('towers', 'data'), 'batch': schema.integer(minimum=1),
     'rates': schema.list_of(schema.number(positive=True), nonempty=True)},
    optional={'note': schema.string(), 'fast': schema.boolean(),
              'memory': schema.nullable(schema.number(minimum=0))})
FILE = schema.table({'title': schema.string(nonempty=True), 'runs': schema.list_of(RUN)},
                    optional={'extras': schema.table({}, others=schema.anything())})
GOOD = {'title': 'A run', 'runs': [{'strategy': 'data', 'batch': 128, 'rates': [1, 2.5]},
                                   {'strategy': 'towers', 'batch': 1, 'rates': [3.0],
                                    'note': '', 'fast': False, 'memory': None}],
        'extras': {'hours': 9, 'series': {'x': [1]}}}


def _refusal(value) -> str:
  with pytest.raises(FileError) as info:
    schema.check(value, FILE, 'f.json', FileError)
  message = str(info.value)
  assert '\n' not in message and message.startswith('f.json: ')
  return message


def test_a_good_file_passes_with_numbers_as_floats_and_extras_kept():
  out = schema.check(GOOD, FILE, 'f.json', FileError)
  assert out['runs'][0]['rates'] == [1.0, 2.5] and isinstance(out['runs'][0]['rates'][0], float)
  assert out['runs'][1]['memory'] is None and out['runs'][1]['fast'] is False
  assert out['extras'] == GOOD['extras']


@pytest.mark.parametrize('change,words', [
    (lambda f: f.pop('title'), 'f.json: title: missing'),
    (lambda f: f.update(title='  '), 'title: '),
    (lambda f: f.update(runs={}), 'runs: {} is not a list'),
    (lambda f: f['runs'][1].update(batch=1.0), 'runs[1].batch: 1.0 is not an integer'),
    (lambda f: f['runs'][1].update(strategy=True), 'runs[1].strategy: True; expected one of'),
    (lambda f: f['runs'][1].update(strategy='hybrid'), "runs[1].strategy: 'hybrid'; expected one "
     'of towers, data'),
    (lambda f: f['runs'][0].update(batch=0), 'runs[0].batch: 0 is not an integer >= 1'),
    (lambda f: f['runs'][0].update(batch=True), 'runs[0].batch: True is not an integer'),
    (lambda f: f['runs'][0].update(batch=12.8), 'runs[0].batch: 12.8 is not an integer'),
    (lambda f: f['runs'][0].update(rates=[]), 'runs[0].rates: empty'),
    (lambda f: f['runs'][0].update(rates=[1, -1]), 'runs[0].rates[1]: -1 is not a positive number'),
    (lambda f: f['runs'][0].update(rates=[math.inf]), 'runs[0].rates[0]: inf is not'),
    (lambda f: f['runs'][0].update(rates=[False]), 'runs[0].rates[0]: False is not'),
    (lambda f: f['runs'][1].update(memory=-1), 'runs[1].memory: -1 is not a finite number >= 0'),
    (lambda f: f['runs'][1].update(fast='no'), "runs[1].fast: 'no' is not true or false"),
    (lambda f: f['runs'][1].update(strategi='data'), 'runs[1]: unknown key strategi'),
    (lambda f: f.update(year=2014, month=1), 'top level: unknown keys month, year'),
    (lambda f: f.update(runs=['x']), "runs[0]: str; expected a table"),
])
def test_each_wrong_field_is_refused_by_its_path(change, words):
  broken = {**GOOD, 'runs': [dict(r) for r in GOOD['runs']]}
  change(broken)
  assert words in _refusal(broken)


def test_a_list_of_fixed_length():
  pair = schema.list_of(schema.integer(), length=2)
  assert pair([1, 2], 'p') == [1, 2]
  with pytest.raises(schema.Mismatch, match='p: 3 values; expected 2'):
    pair([1, 2, 3], 'p')


def test_a_choice_is_of_the_choices_type():
  towers = schema.one_of(1, 2)
  assert towers(2, 'p') == 2
  with pytest.raises(schema.Mismatch, match='p: True; expected one of 1, 2'):
    towers(True, 'p')
  with pytest.raises(schema.Mismatch):
    towers(2.0, 'p')


def test_either_of_two_forms():
  bus = schema.either(schema.number(positive=True), schema.table({}, others=schema.number()),
                      'a number or a table of numbers')
  assert bus(6e9, 'b') == 6e9 and bus({'2': 1, '8': 3}, 'b') == {'2': 1.0, '8': 3.0}
  with pytest.raises(schema.Mismatch, match="b: {'2': 'x'} is not a number or a table"):
    bus({'2': 'x'}, 'b')
