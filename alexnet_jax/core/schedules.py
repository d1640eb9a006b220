"""Learning-rate schedules (config.lr_schedule): the paper's plateau rule, steps, warm-up.

The paper (section 5): "divide the learning rate by 10 when the validation error rate stopped
improving with the current learning rate ... reduced three times prior to termination". That is
`kind='plateau'`: after every evaluation, if the validation top-1 error has not gone below the best
so far by more than `threshold` for `patience` evaluations in a row, the rate is multiplied by
`factor` (0.1), at most `max_drops` (3) times.

`kind='step'` multiplies the rate by `factor` once per entry of `boundaries` that the step count has
reached; `kind='constant'` keeps it. Any kind can start with a linear warm-up over `warmup_steps`.

The rate is a pure function of (config, schedule state, completed steps). The state changes only
at evaluations (plateau), lives on the host, is a JSON-able dict, and is saved in every checkpoint,
so a resumed run uses exactly the rates an uninterrupted run would.
"""

from typing import Any

import ml_collections

KINDS = ('plateau', 'step', 'constant')


def initial_state() -> dict[str, Any]:
  """The plateau rule's memory before any evaluation."""
  return {'best_error': None, 'evals_since_best': 0, 'drops': 0}


def learning_rate(config: ml_collections.ConfigDict, state: dict[str, Any], step: int) -> float:
  """The rate of the update that takes the parameters from `step` completed steps to step + 1."""
  schedule = config.lr_schedule
  rate = float(config.learning_rate)
  if schedule.kind == 'plateau':
    rate *= schedule.factor ** state['drops']
  elif schedule.kind == 'step':
    rate *= schedule.factor ** sum(1 for b in schedule.boundaries if step >= b)
  if step < schedule.warmup_steps:
    rate *= (step + 1) / schedule.warmup_steps
  return rate


def after_evaluation(config: ml_collections.ConfigDict, state: dict[str, Any],
                     val_error: float) -> dict[str, Any]:
  """The state after an evaluation with top-1 error `val_error` (a new dict; plateau only)."""
  schedule = config.lr_schedule
  if schedule.kind != 'plateau':
    return dict(state)
  best = state['best_error']
  if best is None or val_error < best - schedule.threshold:
    return dict(state, best_error=float(val_error), evals_since_best=0)
  waited = state['evals_since_best'] + 1
  if waited >= schedule.patience and state['drops'] < schedule.max_drops:
    return dict(state, evals_since_best=0, drops=state['drops'] + 1)
  return dict(state, evals_since_best=waited)
