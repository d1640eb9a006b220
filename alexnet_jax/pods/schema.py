"""One small checker for the files the plan reads: published cases, hardware profiles and
calibration files.

A schema is a nest of checks written as data beside the format it describes:

    RUN = schema.table({'strategy': schema.one_of(*STRATEGIES),
                        'batch_per_device': schema.integer(minimum=1)})
    run = schema.check(raw['run'], RUN, where='case.toml', error=CaseError, path='run')

and every refusal is one line that names the file, the field (`run.batch_per_device`,
`runs[2].dtype`) and what was expected:

    case.toml: run.batch_per_device: 0 is not an integer >= 1

Why not a library: jsonschema and pydantic both fit the shape checks, but their messages name
the schema's rule rather than the field a person edits, the relations between fields (a range's
low below its high, one value per device count) stay hand-written either way, and pydantic's
compiled core would be the project's heaviest dependency after JAX and TensorFlow for three small
files. These few functions are the whole mechanism.
"""

import math
import tomllib
from typing import Any, Callable, Optional

from alexnet_jax.runtime import paths

# A check takes a value and its field path, and returns the value (converted where the check
# says so) or raises Mismatch.
Check = Callable[[Any, str], Any]


class Mismatch(Exception):
  """A value that does not fit its schema: the field's path and what is wrong with it."""

  def __init__(self, path: str, problem: str):
    super().__init__(f'{path}: {problem}')
    self.path, self.problem = path, problem


def field(path: str, key: Any) -> str:
  """The path of a table's key or a list's item: `run.strategy`, `runs[2]`."""
  if isinstance(key, int):
    return f'{path}[{key}]'
  return f'{path}.{key}' if path else str(key)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def string(nonempty: bool = False) -> Check:
  def check(value, path):
    if not isinstance(value, str) or (nonempty and not value.strip()):
      raise Mismatch(path, f'{value!r} is not a {"non-empty " * nonempty}string')
    return value
  return check


def boolean() -> Check:
  def check(value, path):
    if not isinstance(value, bool):
      raise Mismatch(path, f'{value!r} is not true or false')
    return value
  return check


def integer(minimum: Optional[int] = None) -> Check:
  what = 'an integer' + (f' >= {minimum}' if minimum is not None else '')
  def check(value, path):
    if not _is_int(value) or (minimum is not None and value < minimum):
      raise Mismatch(path, f'{value!r} is not {what}')
    return value
  return check


def number(minimum: Optional[float] = None, positive: bool = False) -> Check:
  """A finite int or float (never a bool), >= minimum, or > 0 with positive; returned as float."""
  what = ('a positive number' if positive else 'a finite number'
          + (f' >= {minimum:g}' if minimum is not None else ''))
  def check(value, path):
    if (not _is_number(value) or not math.isfinite(value) or (positive and value <= 0)
        or (minimum is not None and value < minimum)):
      raise Mismatch(path, f'{value!r} is not {what}')
    return float(value)
  return check


def one_of(*choices: Any) -> Check:
  """One of `choices`, of the same type (true is not the integer 1 here)."""
  def check(value, path):
    if not any(value == c and type(value) is type(c) for c in choices):
      raise Mismatch(path, f'{value!r}; expected one of {", ".join(map(str, choices))}')
    return value
  return check


def either(first: Check, second: Check, what: str) -> Check:
  """What `first` accepts, else what `second` accepts; refused as not `what`."""
  def check(value, path):
    for option in (first, second):
      try:
        return option(value, path)
      except Mismatch:
        pass
    raise Mismatch(path, f'{value!r} is not {what}')
  return check


def anything() -> Check:
  """Any value, kept as it is (a table's free-form extras)."""
  return lambda value, path: value


def nullable(inner: Check) -> Check:
  """None, or what `inner` accepts."""
  def check(value, path):
    return None if value is None else inner(value, path)
  return check


def list_of(item: Check, length: Optional[int] = None, nonempty: bool = False) -> Check:
  """A list whose every item passes `item`; of exactly `length` items where given."""
  def check(value, path):
    if not isinstance(value, list):
      raise Mismatch(path, f'{value!r} is not a list')
    if length is not None and len(value) != length:
      raise Mismatch(path, f'{len(value)} values; expected {length}')
    if nonempty and not value:
      raise Mismatch(path, 'empty; expected at least one value')
    return [item(v, field(path, i)) for i, v in enumerate(value)]
  return check


def table(required: dict, optional: Optional[dict] = None, others: Optional[Check] = None,
          what: str = 'a table') -> Check:
  """A dict with every key of `required`, any of `optional`, and other keys only where `others`
  checks them (else an unknown key is refused by name: a misspelt field is never ignored)."""
  optional = optional or {}
  def check(value, path):
    if not isinstance(value, dict):
      raise Mismatch(path or 'top level', f'{type(value).__name__}; expected {what}')
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown and others is None:
      raise Mismatch(path or 'top level', f'unknown key{"s" * (len(unknown) > 1)} '
                     f'{", ".join(map(str, unknown))}; expected only '
                     f'{", ".join(list(required) + list(optional))}')
    out = {}
    for key, inner in required.items():
      if key not in value:
        raise Mismatch(field(path, key), 'missing')
      out[key] = inner(value[key], field(path, key))
    for key, inner in optional.items():
      if key in value:
        out[key] = inner(value[key], field(path, key))
    for key in unknown:
      out[key] = others(value[key], field(path, key))
    return out
  return check


def check(value: Any, spec: Check, where: str, error: type, path: str = '') -> Any:
  """`value` checked against `spec` (and converted as it says), or `error` with one line:
  `<where>: <field>: <what is wrong>`."""
  try:
    return spec(value, path)
  except Mismatch as e:
    raise error(' '.join(f'{where}: {e}'.split())) from None


def refusal(error: type, where: str, field: str, expected: str) -> Exception:
  """`error` with the one line every refusal of a data file has: `<where>: <field>: <expected>`."""
  return error(' '.join(f'{where}: {field}: {expected}'.split()))


def load_toml(path: str, spec: Check, error: type) -> Any:
  """A TOML file read and checked against `spec`; `error` (one line) for a file that cannot be
  read, is not TOML, or does not fit."""
  try:
    raw = tomllib.loads(paths.read_bytes(path).decode())
  except tomllib.TOMLDecodeError as e:
    raise refusal(error, path, 'TOML', f'{e}; expected a TOML file') from None
  except OSError as e:
    raise refusal(error, path, 'file', f'cannot be read ({e.strerror or e})') from None
  return check(raw, spec, path, error)
