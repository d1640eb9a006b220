"""Learning-rate schedules against hand-worked sequences (the paper's plateau rule, steps,
warm-up), and the refusal of bad schedule fields before any work."""

import json

import jax
import pytest

from alexnet_jax.core import schedules
from alexnet_jax.core import config as config_lib
from configs import paper
from configs import tiny


def _config(**schedule):
  config = tiny.get_config()
  config.learning_rate = 0.01
  config.lr_schedule.update(schedule)
  return config


def _run_plateau(config, errors):
  """The rate after each evaluation, for a sequence of validation errors."""
  state, rates = schedules.initial_state(), []
  for error in errors:
    state = schedules.after_evaluation(config, state, error)
    state = json.loads(json.dumps(state))  # what a checkpoint stores must be enough
    rates.append(schedules.learning_rate(config, state, step=10_000))
  return rates


def test_plateau_divides_by_ten_when_the_error_stops_improving_at_most_three_times():
  config = _config(kind='plateau', factor=0.1, patience=2, threshold=0.01, max_drops=3)
  errors = [0.90, 0.80, 0.795, 0.79,  # 0.795 and 0.79 improve by less than the threshold 0.01
            0.70, 0.71, 0.72,         # improvement, then two evaluations without: drop 2
            0.72, 0.72,               # drop 3
            0.72, 0.72, 0.72, 0.72]   # no fourth drop
  expected = [0.01, 0.01, 0.01, 0.001,
              0.001, 0.001, 0.0001,
              0.0001, 0.00001,
              0.00001, 0.00001, 0.00001, 0.00001]
  assert _run_plateau(config, errors) == pytest.approx(expected, rel=1e-12)


def test_paper_config_uses_the_plateau_rule():
  config = paper.get_config()
  assert config.lr_schedule.kind == 'plateau'
  assert (config.learning_rate, config.lr_schedule.factor, config.lr_schedule.max_drops) == (
      0.01, 0.1, 3)


def test_step_schedule_with_warmup():
  config = _config(kind='step', factor=0.5, boundaries=(6, 8), warmup_steps=4)
  rates = [schedules.learning_rate(config, schedules.initial_state(), s) for s in range(10)]
  # warm-up (s + 1) / 4 for s < 4; x 0.5 from 6 completed steps, x 0.25 from 8.
  expected = [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025]
  assert rates == pytest.approx(expected, rel=1e-12)


def test_constant_ignores_evaluations():
  config = _config(kind='constant')
  assert _run_plateau(config, [0.9, 0.9, 0.9, 0.9, 0.9]) == [0.01] * 5


@pytest.mark.parametrize('field,value,words', [
    ('kind', 'cosine', ['lr_schedule.kind', 'plateau']),
    ('factor', 2.0, ['lr_schedule.factor=2.0', 'below 1']),
    ('patience', 0, ['lr_schedule.patience=0']),
    ('threshold', -0.1, ['lr_schedule.threshold=-0.1']),
    ('warmup_steps', -5, ['lr_schedule.warmup_steps=-5']),
])
def test_bad_schedule_field_is_refused_by_the_config_check(field, value, words):
  config = _config(**{field: value})
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check(config, jax.devices())
  for word in words:
    assert word in str(e.value)


def test_step_kind_needs_increasing_boundaries():
  config = _config(kind='step', boundaries=(60, 30))
  with pytest.raises(config_lib.ConfigError, match=r'boundaries=\(60, 30\).*increasing'):
    config_lib.check(config, jax.devices())
