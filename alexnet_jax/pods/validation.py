"""The pod plan set beside the published AlexNet measurements it can reproduce.

    python -m alexnet_jax.plan --published --out=DIR

Every case file (alexnet_jax/published/*.toml, read by published.py) names a published run: its
source, its machine (a hardware profile whose numbers have public sources), the network as
published (a config of this project built to match it), the strategy, the batch per device, the
device counts and the measured images/s. Each device count is compiled for the case's target as
the plan compiles a pod (compile.lower / compile.analyse, the nearest compiler here where the machine
has none: `compile_as`), and predicted by the cost model (costmodel.py) at each of its stages, so
the error of each change to the model shows:

- a case that calibrates fits its platform's compute efficiency at its smallest device count
  (costmodel.fit_efficiency) and predicts every other count with it: the only fitted number;
- a case that does not (the paper's two GTX 580s: one published point) is predicted at the
  assumed efficiency, and the efficiency its measurement implies is stated beside it.

For each case and device count: the published and predicted images/s, the error, the scaling
efficiency (images/s at N over N/N0 x images/s at the smallest count N0) both ways, and whether
the order of the sizes is kept, beside the collective algorithm each case's software stack
used (run.collective_algorithm), which the last stage replays over the machine's link graph. Targets: every point other than a
calibration point within +-15 %, every scaling efficiency within +-0.08 of the published one.

Before anything is compiled, every case's [network] is checked against its config and the
published dtype applied (published.replay_config); a fixed global batch (run.global_batch) is
split over each count's batch shards (published.batch_per_replica).

Writes DIR/validation.json, DIR/validation.md and DIR/validation.png.
"""

import time
from typing import Any, Callable, Optional, Sequence

from alexnet_jax.pods import compile as compile_lib
from alexnet_jax.pods import costmodel
from alexnet_jax.pods import published
from alexnet_jax.pods import targets as targets_lib
from alexnet_jax.report.write import write_report

ERROR_TARGET = 0.15  # |predicted / published - 1| at every point that was not fitted
SCALING_TARGET = 0.08  # |predicted - published scaling efficiency|


def load_cases(folder: Optional[str] = None) -> list:
  """The case files of `folder` (default: the shipped ones), each checked by published.load."""
  return published.load_all(folder) if folder else published.load_all()


def _scaling(devices: Sequence[int], ips: Sequence[float]) -> list[Optional[float]]:
  """images/s at N over (N / N0) x images/s at the smallest count N0."""
  n0, r0 = devices[0], ips[0]
  return [None if not r0 else r / (n / n0 * r0) for n, r in zip(devices, ips)]


def _order_kept(published_ips: Sequence[float], predicted: Sequence[float]) -> bool:
  rank = lambda xs: sorted(range(len(xs)), key=lambda i: xs[i])
  return rank(published_ips) == rank(predicted)


def case_stack(case) -> costmodel.Stack:
  """The software stack's communication a case names (run.collective_algorithm and its
  granularity), which the link-graph term replays."""
  return costmodel.Stack(getattr(case, 'collective_algorithm', '') or '',
                         getattr(case, 'collective_granularity', 'compiled'),
                         getattr(case, 'bucket_bytes', 0.0))


def predict_case(case, entries: Sequence[dict], profile: targets_lib.Profile, dtype: str,
                 features: costmodel.Features, efficiency: Optional[float] = None) -> dict:
  """One stage of the model on one case: the efficiency (fitted at the smallest count if the
  case calibrates and `efficiency` is None, else `efficiency` or the assumed one), the
  predicted images/s per count, errors, scaling efficiencies and whether the targets hold."""
  measured = list(case.images_per_second)
  batch = [e['batch_size'] for e in entries]
  source = 'assumed'
  stack = case_stack(case)
  if efficiency is None and case.calibrate:
    efficiency = costmodel.fit_efficiency(entries[0], profile, dtype, batch[0] / measured[0],
                                          features, stack)
    source = f'calibrated at {case.devices[0]} device{"s" * (case.devices[0] > 1)}'
  if efficiency is None:
    efficiency, source = costmodel.ASSUMED_EFFICIENCY, 'assumed'
  steps = [costmodel.predict_step(e, profile, efficiency, dtype, features, stack=stack)
           for e in entries]
  predicted = [b / s['step_seconds']['with_overlap'] for b, s in zip(batch, steps)]
  errors = [p / m - 1 for p, m in zip(predicted, measured)]
  fitted = [case.calibrate and source != 'assumed' and i == 0 for i in range(len(entries))]
  pub_scaling, pred_scaling = _scaling(case.devices, measured), _scaling(case.devices, predicted)
  scaling_gap = [None if a is None or b is None or len(case.devices) < 2 or i == 0 else b - a
                 for i, (a, b) in enumerate(zip(pub_scaling, pred_scaling))]
  checked = [abs(err) for err, f in zip(errors, fitted) if not f]
  gaps = [abs(g) for g in scaling_gap if g is not None]
  return {
      'efficiency': efficiency, 'efficiency_source': source,
      'predicted_images_per_second': predicted, 'errors': errors, 'fitted': fitted,
      'predicted_scaling': pred_scaling, 'published_scaling': pub_scaling,
      'scaling_gap': scaling_gap,
      'compute_seconds': [s['compute_seconds'] for s in steps],
      'communication_seconds': [s['communication_seconds'] for s in steps],
      'hidden_seconds': [s['hidden_seconds'] for s in steps],
      'max_error': max(checked) if checked else None,
      'max_scaling_gap': max(gaps) if gaps else None,
      'order_kept': _order_kept(measured, predicted),
      'meets_targets': ((not checked or max(checked) <= ERROR_TARGET)
                        and (not gaps or max(gaps) <= SCALING_TARGET)),
  }


def replay(cases: Sequence, cache_dir: Optional[str] = None, workers: int = 0,
           log: Callable[[str], Any] = print) -> dict:
  """Every case compiled at each of its device counts and predicted at every model stage."""
  jobs = {}
  profiles = {}
  # Every case's [network] against its config, the published dtype applied, before anything is
  # compiled (published.replay_config: CaseError, exit 2).
  configs = {case.key: published.replay_config(case) for case in cases}
  for case in cases:
    profiles.setdefault(case.profile, targets_lib.load(case.profile))
  for case in cases:
    profile = profiles[case.profile]
    why = targets_lib.compiler_missing(profile)
    if why:
      raise targets_lib.TargetError(f'{case.key}: {why}')
    for n in case.devices:
      devices = targets_lib.devices(profile, n)
      shards = compile_lib.batch_shards(configs[case.key], case.strategy, n, devices)
      config_n = compile_lib.replica_config(configs[case.key], case.strategy, n, devices,
                                            published.batch_per_replica(case, n, shards))
      jobs[(case.key, n)] = compile_lib.lower(f'{case.key}/{n}', config_n, devices, profile,
                                              cache_dir, targets_lib.topology_name(profile, n))
  todo = [j for j in jobs.values() if j.compiled is None]
  log(f'compiling {len(todo)} programs ({len(jobs) - len(todo)} cached) ...')
  compile_lib.compile_all(todo, workers)
  out = []
  for case in cases:
    profile = profiles[case.profile]
    entries = [compile_lib.analyse(jobs[(case.key, n)], profile) for n in case.devices]
    dtype = jobs[(case.key, case.devices[0])].config.model.dtype
    stages = []
    # The plan before this model: its first form at the assumed efficiency.
    before = predict_case(case, entries, profile, dtype, costmodel.FIRST,
                          costmodel.ASSUMED_EFFICIENCY)
    for name, features in costmodel.STAGES:
      stages.append(dict(predict_case(case, entries, profile, dtype, features), stage=name))
    after = stages[-1]
    implied = [costmodel.fit_efficiency(e, profile, dtype, e['batch_size'] / m,
                                        stack=case_stack(case))
               for e, m in zip(entries, case.images_per_second)]
    out.append({
        'key': case.key, 'title': case.title, 'cite': case.cite, 'url': case.url,
        'checked': case.checked, 'note': case.note, 'profile': case.profile,
        'profile_name': profile.name, 'compiled_as': profile.compiled_as or profile.key,
        'compiler': compile_lib.compiler_version(profile), 'config': case.config,
        'strategy': case.strategy, 'batch_per_device': case.batch_per_device,
        'fixed_global_batch': case.global_batch, 'dtype': dtype,
        'collective_algorithm': case.collective_algorithm,
        'algorithm_source': case.algorithm_source,
        'collective_granularity': case.collective_granularity,
        'calibrate': case.calibrate, 'devices': list(case.devices),
        'global_batch': [e['batch_size'] for e in entries],
        'published_images_per_second': list(case.images_per_second),
        'published_low': list(case.low) if case.low else None,
        'published_high': list(case.high) if case.high else None,
        'bytes_per_step': [e['bytes_per_step'] for e in entries],
        'flops_per_device': [e['compiled_flops_per_device'] for e in entries],
        'implied_efficiency': implied,
        'before': before, 'stages': stages, 'after': after,
    })
    log(f'{case.key}: after {", ".join(f"{n}: {p:,.0f}" for n, p in zip(case.devices, after["predicted_images_per_second"]))} '
        f'images/s predicted, published {", ".join(f"{m:,.0f}" for m in case.images_per_second)}')
  return {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
          'error_target': ERROR_TARGET, 'scaling_target': SCALING_TARGET,
          'stages': [name for name, _ in costmodel.STAGES], 'cases': out}


# --- Writing it down. ---

def _pct(x: Optional[float]) -> str:
  return '-' if x is None else f'{100 * x:+.1f} %'


def _f(x: Optional[float], digits: int = 2) -> str:
  return '-' if x is None else f'{x:.{digits}f}'


def markdown(result: dict) -> str:
  """validation.md: per case and device count, published against predicted (before and after),
  the scaling efficiencies, and each stage of the model's errors."""
  lines = [f'# The plan against published measurements ({result["date"]})', '',
           f'Targets: every point that was not fitted within +-{result["error_target"]:.0%}; '
           f'scaling efficiency within +-{result["scaling_target"]} of the published one. '
           '"before": the plan\'s first model at the assumed efficiency; "after": the full '
           'model, its efficiency calibrated at the smallest count where the case calibrates.',
           '', '| case | algorithm | devices | batch | published images/s | before | error | '
           'after | error | scaling published | scaling predicted | order kept |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
  for c in result['cases']:
    b, a = c['before'], c['after']
    for i, n in enumerate(c['devices']):
      pub = f'{c["published_images_per_second"][i]:,.0f}'
      if c['published_low'] and c['published_high']:
        pub += f' ({c["published_low"][i]:,.0f}-{c["published_high"][i]:,.0f})'
      fitted = ' (fitted)' if a['fitted'][i] else ''
      lines.append(
          f'| {c["key"]} | {c.get("collective_algorithm") or "-"} | {n} | '
          f'{c["global_batch"][i]} | {pub} | '
          f'{b["predicted_images_per_second"][i]:,.0f} | {_pct(b["errors"][i])} | '
          f'{a["predicted_images_per_second"][i]:,.0f} | {_pct(a["errors"][i])}{fitted} | '
          f'{_f(a["published_scaling"][i]) if len(c["devices"]) > 1 else "-"} | '
          f'{_f(a["predicted_scaling"][i]) if len(c["devices"]) > 1 else "-"} | '
          f'{"yes" if a["order_kept"] else "NO"} |')
  lines += ['', '## Each change to the model', '',
            'Largest error over the points that were not fitted, and the largest scaling gap, '
            'per case, as each term was added (costmodel.STAGES).', '',
            '| stage | ' + ' | '.join(c['key'] for c in result['cases']) + ' |',
            '|---|' + '---|' * len(result['cases'])]
  for i, stage in enumerate(result['stages']):
    cells = []
    for c in result['cases']:
      s = c['stages'][i]
      cells.append(f'eff {s["efficiency"]:.3f}, error {_pct(s["max_error"])}, scaling '
                   f'{_f(s["max_scaling_gap"])}{"" if s["meets_targets"] else " (misses)"}')
    lines.append(f'| {stage} | ' + ' | '.join(cells) + ' |')
  lines += ['', '## Cases', '']
  for c in result['cases']:
    a = c['after']
    implied = ', '.join(f'{n}: {_f(e, 3)}' for n, e in zip(c['devices'], c['implied_efficiency']))
    lines += [f'### {c["title"]} ({c["key"]})', '',
              f'- Source: {c["cite"]} {c["url"]} (figures read from the source here: '
              f'{"yes" if c["checked"] else "NO"}). {c["note"]}',
              f'- Machine: {c["profile_name"]} (profile `{c["profile"]}`), compiled as '
              f'`{c["compiled_as"]}` by {c["compiler"]}; network `{c["config"]}` in '
              f'{c.get("dtype", "float32")}, `{c["strategy"]}`, '
              + (f'a global batch of {c["fixed_global_batch"]} split over the batch shards.'
                 if c.get('fixed_global_batch') else
                 f'{c["batch_per_device"]} images per device.'),
              f'- Collective algorithm: {c.get("collective_algorithm") or "-"} (source: '
              f'{c.get("algorithm_source") or "-"}).',
              f'- Efficiency used: {a["efficiency"]:.3f} ({a["efficiency_source"]}); the '
              f'efficiency each published point implies: {implied}.',
              f'- Per device count: compute {", ".join(f"{t * 1e3:.1f}" for t in a["compute_seconds"])} ms, '
              f'communication {", ".join(f"{t * 1e3:.1f}" for t in a["communication_seconds"])} ms, '
              f'hidden by the schedule {", ".join(f"{t * 1e3:.1f}" for t in a["hidden_seconds"])} ms; '
              f'{", ".join(f"{b / 1e6:.1f}" for b in c["bytes_per_step"])} MB per device per step.',
              f'- Targets: {"met" if a["meets_targets"] else "MISSED"} (largest error '
              f'{_pct(a["max_error"])}, largest scaling gap {_f(a["max_scaling_gap"])}).', '']
  return '\n'.join(lines) + '\n'


def chart_figure(result: dict):
  """validation.png's Figure: per case, the published (measured) images/s with its range where
  the source gives one, and the PREDICTED images/s before and after the model's changes, against
  the device count (log2 axis, ticks at the counts; log images/s: both double)."""
  from alexnet_jax.report import charts  # pylint: disable=g-import-not-at-top
  cases = list(result['cases'])
  fig, axes = charts.figure(900, 330 * max(1, len(cases)), max(1, len(cases)))
  for ax, c in zip(axes, cases):
    xs = c['devices']
    published = 'published (measured)'
    series = [(published, xs, c['published_images_per_second']),
              ('PREDICTED, before (first model, assumed efficiency)', xs,
               c['before']['predicted_images_per_second']),
              ('PREDICTED, after (full model)', xs, c['after']['predicted_images_per_second'])]
    ranges = ({published: (c['published_low'], c['published_high'])}
              if c.get('published_low') and c.get('published_high') else None)
    fitted = (f'; efficiency fitted at {xs[0]} device{"s" if xs[0] > 1 else ""}'
              if c.get('calibrate') else '')
    charts.lines(ax, f'{c["key"]}: images/s, PREDICTED vs measured{fitted}', series,
                 x_label='devices', y_label='images/s', devices=True, log_y=True,
                 ranges=ranges)
  if not cases:
    axes[0].set_title('no published cases: PREDICTED vs measured', loc='left')
  return fig


def chart(result: dict) -> bytes:
  """validation.png (chart_figure, drawn with matplotlib)."""
  from alexnet_jax.report import charts  # pylint: disable=g-import-not-at-top
  return charts.png(chart_figure(result))


def write(result: dict, out_dir: str) -> None:
  write_report(out_dir, 'validation', result, markdown, chart)
