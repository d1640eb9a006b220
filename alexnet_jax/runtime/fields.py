"""Dotted fields of nested configs, and their JSON form: one way for every module that compares,
saves or overrides a config's fields (the config check, checkpoints, the data spec, ablations).

Kept below core and data (no project imports), so both read configs the same way.
"""

import json
from typing import Any

import ml_collections


def flat(tree: Any, prefix: str = '') -> dict:
  """{'model.lrn': True, ...} of a ConfigDict or a nested dict."""
  out = {}
  for key, value in (tree.items() if hasattr(tree, 'items') else ()):
    if hasattr(value, 'items'):
      out.update(flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def get(config: ml_collections.ConfigDict, field: str) -> Any:
  """config['model']['lrn'] for field 'model.lrn'."""
  node = config
  for part in field.split('.'):
    node = node[part]
  return node


def set(config: ml_collections.ConfigDict, field: str, value: Any) -> None:  # pylint: disable=redefined-builtin
  """Sets a dotted field; a list (as JSON stores a tuple) is set back as a tuple."""
  *path, last = field.split('.')
  node = config
  for part in path:
    node = node[part]
  node[last] = tuple(value) if isinstance(value, list) else value


def plain(value: Any) -> Any:
  """As JSON stores it: a ConfigDict as nested dicts, tuples as lists; so a value saved and read
  back compares equal to the live one."""
  if isinstance(value, ml_collections.ConfigDict):
    return json.loads(value.to_json_best_effort())
  return list(value) if isinstance(value, tuple) else value
