"""The pod plan: every strategy compiled for a TPU slice or GPU nodes, and its step time predicted.

    python -m alexnet_jax.plan --config=configs/paper.py --target=tpu-v5e \
        --devices=2,4,16,64,256 --out=DIR
    python -m alexnet_jax.plan --published --out=DIR     # replay the published runs

For each device count, the real train step of every strategy that fits (run.build on the
target's devices, `jax.experimental.topologies`) is compiled by the target's own compiler without
being run; from the compiled program come its ops in scheduled order and its collectives
(analysis.py, hlo.py: kind, bytes, layer, group, whether asynchronous), and XLA's memory
analysis. What is *predicted* from them uses the profile's numbers (targets.py, every one with a
public source) and the cost model of costmodel.py, simple enough to check by hand: each op on
its roofline, each collective at the link's bus bandwidth, the schedule replayed on a compute and
a collective stream. The one number not from a datasheet is the compute efficiency: assumed
(--efficiency), or calibrated from a measured run (--calibration, a file written by
`python -m alexnet_jax.calibrate`); the report says which.

Compiling and reading the programs: compile.py (cached, keyed by the lowered program, the target
and the compiler's version, so a second plan of the same configs only lowers). The command's
flags: alexnet_jax/plan.py.

Writes DIR/plan.json, DIR/plan.md and DIR/plan.png.
"""

import json
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections

from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies as strategies_lib
from alexnet_jax.pods import calibration as calibration_lib
from alexnet_jax.pods import compile as compile_lib
from alexnet_jax.pods import costmodel
from alexnet_jax.pods import targets as targets_lib
from alexnet_jax.program import measure as measure_lib
from alexnet_jax.program.hlo import LAYERS, LOSS
from alexnet_jax.runtime import errors
from alexnet_jax.runtime import paths
from alexnet_jax.runtime import quiet
from alexnet_jax.report.write import write_report


PREDICTED = 'PREDICTED, not measured'
# The compute efficiency a plan assumes without a calibration (--efficiency).
ASSUMED_EFFICIENCY = costmodel.ASSUMED_EFFICIENCY


def predict(entry: dict, profile: targets_lib.Profile, efficiency: float, dtype: str,
            input_per_core: Optional[dict], features: costmodel.Features = costmodel.ALL,
            latency_scale: float = 1.0) -> dict:
  """The predicted step of one compiled entry (costmodel.predict_step), whether it fits, and
  the hosts' input ceiling. `input_per_core`: the training pipeline's images/s per CPU core, by
  input path: where augmentation runs ('host', 'device'), or the 256 x 256 squares it reads
  ('jpeg', 'raw'; config.resized)."""
  step = costmodel.predict_step(entry, profile, efficiency, dtype, features, latency_scale)
  steps = step['step_seconds']
  memory = entry['memory_per_device'].get('peak_memory_bytes')
  capacity = profile.per_device('memory_bytes')
  out = {
      'flops_per_device': entry['compiled_flops_per_device'] or entry['analytic_flops_per_device'],
      'flops_source': 'compiled' if entry['compiled_flops_per_device'] else 'formula',
      'memory_per_device_bytes': memory,
      'fits': None if memory is None else memory <= capacity,
      'memory_headroom_bytes': None if memory is None else capacity - memory,
      'predicted_compute_seconds': step['compute_seconds'],
      'predicted_communication_seconds': step['communication_seconds'],
      'predicted_hidden_seconds': step['hidden_seconds'],
      'predicted_step_seconds': steps,
      'predicted_images_per_second': {k: entry['batch_size'] / v for k, v in steps.items()},
  }
  cpus = profile.per_device('host_cpus_per_chip')
  rate = (input_per_core or {}).get(entry.get('input_path', entry.get('augment_on', 'host')))
  if rate and cpus:
    ceiling = rate * cpus * entry['devices']
    out['input_images_per_second'] = ceiling
    out['limited_by'] = ('input' if ceiling < out['predicted_images_per_second']['with_overlap']
                         else 'chips')
  return out


def make_plan(config: ml_collections.ConfigDict, profile: targets_lib.Profile,
              device_counts: Sequence[int], *, strategies: Optional[Sequence[str]] = None,
              batch_per_replica: int = 128, efficiency: float = ASSUMED_EFFICIENCY,
              efficiency_source: str = 'assumed', input_per_core: Optional[dict] = None,
              cache_dir: Optional[str] = None, workers: int = 0,
              features: costmodel.Features = costmodel.ALL,
              compare_overlap: bool = False,
              log: Callable[[str], Any] = print) -> dict:
  """Every strategy that fits each device count of `profile`, compiled and predicted.

  `efficiency_source` says where `efficiency` comes from ('assumed', or the calibration it was
  fitted to); the report's label carries it. The programs are lowered one after the other and
  compiled by `workers` threads (0: one per CPU): a compiler works on one program on one core,
  so a plan compiles as many at a time."""
  jobs, skipped, baselines = [], {}, {}
  for n in device_counts:
    try:
      topology = targets_lib.topology_name(profile, n)
    except targets_lib.TargetError as e:
      skipped[f'*/{n}'] = str(e)
      log(f'{n} devices: skipped ({e})')
      continue
    devices = targets_lib.devices(profile, n)
    for name in strategies or strategies_lib.STRATEGIES:
      label = f'{name}/{n}'
      try:
        config_n = compile_lib.replica_config(config, name, n, devices, batch_per_replica)
      except ValueError as e:
        skipped[label] = str(e)
        log(f'{label}: skipped ({e})')
        continue
      why = measure_lib.skip_reason(config_n, devices)
      if why:
        skipped[label] = why
        log(f'{label}: skipped ({why})')
        continue
      jobs.append(compile_lib.lower(label, config_n, devices, profile, cache_dir, topology))
      if compare_overlap:  # the same step with the compiler's defaults (no overlap options)
        plain = config_n.copy_and_resolve_references()
        plain.overlap_collectives = 'false'
        baselines[label] = compile_lib.lower(label, plain, devices, profile, cache_dir,
                                             topology)
  todo = [j for j in jobs + list(baselines.values()) if j.compiled is None]
  if todo:
    log(f'compiling {len(todo)} programs for {profile.key} ({len(jobs) - len(todo)} cached) ...')
  compile_lib.compile_all(todo, workers)
  runs = []
  for job in jobs:
    entry = compile_lib.analyse(job, profile)
    entry.update(predict(entry, profile, efficiency, config.model.dtype, input_per_core,
                         features))
    entry['overlap_options'] = run_lib.overlap_options(job.config, profile.compiler)
    if job.label in baselines:
      entry['without_overlap_options'] = overlap_summary(
          compile_lib.analyse(baselines[job.label], profile), profile, efficiency,
          config.model.dtype, features)
    runs.append(entry)
    how = 'cached' if entry['cached'] else f'compiled in {entry["compile_seconds"]:.1f} s'
    log(f'{job.label}: {how}, {entry["bytes_per_step"] / 1e6:.2f} MB/step/device, predicted '
        f'{entry["predicted_images_per_second"]["with_overlap"]:,.0f} images/s ({PREDICTED})')
  return {
      'target': profile.key, 'profile': profile.to_json(),
      'compiler': compile_lib.compiler_version(profile), 'date': time.strftime('%Y-%m-%d %H:%M UTC',
                                                                 time.gmtime()),
      'dtype': config.model.dtype, 'image_size': config.image_size,
      'batch_per_replica': batch_per_replica, 'efficiency': efficiency,
      'efficiency_source': efficiency_source,
      'input_per_core_images_per_second': input_per_core,
      'label': f'{PREDICTED}: {profile.name}, compute at {efficiency:.0%} of peak '
               f'({efficiency_source})',
      'runs': runs, 'skipped': skipped, 'winners': winners(runs),
      'sensitivity': sensitivity(runs, profile, efficiency, config.model.dtype, features)}


def overlap_summary(entry: dict, profile: targets_lib.Profile, efficiency: float, dtype: str,
                    features: costmodel.Features = costmodel.ALL) -> dict:
  """A compiled step's asynchronous collectives and what the replay hides (the plan's
  comparison of the step compiled with and without the overlap options)."""
  step = costmodel.predict_step(entry, profile, efficiency, dtype, features)
  return {'asynchronous_collectives': sum(1 for i in entry['instructions'].values()
                                          if i['asynchronous']),
          'collectives': len(entry['instructions']),
          'predicted_hidden_seconds': step['hidden_seconds'],
          'predicted_step_seconds': step['step_seconds']}


# Where the ranking is tested: the efficiency x 0.5 .. x 1.5, every latency x 0.5 .. x 4.
EFFICIENCY_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
LATENCY_SCALES = (0.5, 1.0, 2.0, 4.0)


def sensitivity(runs: Sequence[dict], profile: targets_lib.Profile, efficiency: float,
                dtype: str, features: costmodel.Features = costmodel.ALL) -> dict:
  """The winners at each device count when the compute efficiency and the links' latencies
  move (the programs are not recompiled: only the model's two uncertain inputs change), and
  the points where a winner differs from the plan's."""
  base = winners(runs)
  grid, flips = [], []
  for e in EFFICIENCY_SCALES:
    for lat in LATENCY_SCALES:
      moved = []
      for r in runs:
        step = costmodel.predict_step(r, profile, efficiency * e, dtype, features, lat)
        moved.append(dict(r, predicted_images_per_second={
            k: r['batch_size'] / v for k, v in step['step_seconds'].items()}))
      won = winners(moved)
      grid.append({'efficiency_scale': e, 'latency_scale': lat, 'winners': won})
      for n, name in won.items():
        if base.get(n) != name:
          flips.append({'devices': int(n), 'efficiency_scale': e, 'latency_scale': lat,
                        'winner': name, 'plan_winner': base.get(n)})
  return {'efficiency_scales': list(EFFICIENCY_SCALES), 'latency_scales': list(LATENCY_SCALES),
          'grid': grid, 'flips': flips}


def measure_beside(plan: dict, config: ml_collections.ConfigDict, devices: Sequence,
                   steps: int = 3, warmup: int = 1, log: Callable[[str], Any] = print) -> None:
  """Runs each planned step that `devices` can hold (a real GPU or TPU of the target, in this
  process) and puts the measured step beside the predicted one: the same program bench times,
  built by run.build and timed by measure.time_steps on a synthetic batch."""
  for r in plan['runs']:
    if r['devices'] > len(devices):
      r['measured_step_seconds'] = r['measured_images_per_second'] = None
      continue
    config_n = compile_lib.replica_config(config, r['strategy'], r['devices'], devices,
                                          plan['batch_per_replica'])
    run = run_lib.build(config_n, devices)
    state, batch = run.init_state(), run.synthetic_batch(config.seed)
    compiled, _ = measure_lib.compile_train_step(run, state, batch)
    step = measure_lib.time_steps(compiled, state, batch, steps, warmup)['step_seconds']
    r['measured_step_seconds'] = step
    r['measured_images_per_second'] = config_n.batch_size / step
    r['measured_on'] = devices[0].device_kind
    log(f'{r["strategy"]}/{r["devices"]}: measured {r["measured_images_per_second"]:,.0f} '
        f'images/s on {devices[0].device_kind}, predicted '
        f'{r["predicted_images_per_second"]["with_overlap"]:,.0f}')


def winners(runs: Sequence[dict]) -> dict:
  """The strategy with the most predicted images/s (with overlap) at each device count."""
  best = {}
  for r in runs:
    ips = r['predicted_images_per_second']['with_overlap']
    if r.get('fits') is False:
      continue
    if r['devices'] not in best or ips > best[r['devices']][1]:
      best[r['devices']] = (r['strategy'], ips)
  return {str(n): s for n, (s, _) in sorted(best.items())}


# --- Writing it down. ---

def _mb(x: Optional[float]) -> str:
  return '-' if x is None else f'{x / 1e6:,.1f}'


def markdown(plan: dict) -> str:
  """plan.md: the predicted scaling table, the winners, the compiled bytes against the formula
  with every difference explained, and the profile with its sources."""
  p = plan['profile']
  per_shard = plan['batch_per_replica'] or "the config's"
  lines = [
      f'# Pod plan: {p["name"]} ({plan["target"]}), {plan["date"]}', '',
      f'**{plan["label"]}.** Compiled by {plan["compiler"]}'
      + (f' for {p["compiled_as"]} (no compiler here targets this machine: the program, its '
         'collectives and FLOPs are that target\'s)' if p['compiled_as'] else '') + '; '
      f'{plan["dtype"]}, {plan["image_size"]}x{plan["image_size"]}, '
      f'{per_shard} images per batch shard, augmentation on the '
      f'{plan["runs"][0]["augment_on"] if plan["runs"] else "-"}. Bytes are per '
      'device per step (ring convention); the step time is the range between no overlap and '
      'the overlap the compiled schedule allows.', '',
      '| strategy | devices | hosts | batch | MB/step compiled | MB/step formula | memory GB '
      '(fits) | GFLOP/device | compute ms | comm ms | step ms (overlap..none) | images/s '
      '(predicted) | input images/s | limit | compile s |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in plan['runs']:
    s = r['predicted_step_seconds']
    mem = r['memory_per_device_bytes']
    lines.append(
        f'| {r["strategy"]} | {r["devices"]} | {r["hosts"]} | {r["batch_size"]} | '
        f'{_mb(r["bytes_per_step"])} | {_mb(r["analytic_bytes_per_step"])} | '
        f'{"-" if mem is None else f"{mem / 1e9:.2f}"} '
        f'({"-" if r["fits"] is None else "yes" if r["fits"] else "NO"}) | '
        f'{r["flops_per_device"] / 1e9:,.1f} | {r["predicted_compute_seconds"] * 1e3:.2f} | '
        f'{r["predicted_communication_seconds"] * 1e3:.2f} | '
        f'{s["with_overlap"] * 1e3:.2f}..{s["no_overlap"] * 1e3:.2f} | '
        f'{r["predicted_images_per_second"]["with_overlap"]:,.0f} | '
        f'{r.get("input_images_per_second", 0):,.0f} | {r.get("limited_by", "-")} | '
        f'{"cached" if r["cached"] else round(r["compile_seconds"], 1)} |')
  for label, why in plan['skipped'].items():
    lines.append(f'| {label} | skipped: {why} |' + ' |' * 13)
  if p.get('reported_images_per_second'):
    lines += ['', f'Measured on this hardware and reported by its source: '
              f'{p["reported_images_per_second"]:,.0f} images/s '
              f'({p["sources"].get("reported_images_per_second", "")}).']
  measured = [r for r in plan['runs'] if r.get('measured_images_per_second')]
  if measured:
    lines += ['', '**Measured on ' + measured[0]['measured_on'] + '** beside predicted: ' + ', '.join(
        f'{r["strategy"]}/{r["devices"]} {r["measured_images_per_second"]:,.0f} images/s '
        f'(predicted {r["predicted_images_per_second"]["with_overlap"]:,.0f})' for r in measured)]
  compared = [r for r in plan['runs'] if r.get('without_overlap_options')]
  if compared:
    lines += ['', '**Overlap options** (core/run.py OVERLAP_OPTIONS, docs/pods.md): '
              'the step compiled with them against the compiler\'s defaults.', '',
              '| strategy | devices | async collectives (with / without) | hidden ms (with / '
              'without) | step ms predicted (with / without) |', '|---|---|---|---|---|']
    for r in compared:
      w = r['without_overlap_options']
      mine = sum(1 for i in r['instructions'].values() if i['asynchronous'])
      lines.append(
          f'| {r["strategy"]} | {r["devices"]} | {mine}/{len(r["instructions"])} / '
          f'{w["asynchronous_collectives"]}/{w["collectives"]} | '
          f'{r["predicted_hidden_seconds"] * 1e3:.3f} / {w["predicted_hidden_seconds"] * 1e3:.3f}'
          f' | {r["predicted_step_seconds"]["with_overlap"] * 1e3:.3f} / '
          f'{w["predicted_step_seconds"]["with_overlap"] * 1e3:.3f} |')
  lines += ['', '**Winner at each size** (predicted images/s with overlap, among those that fit): '
            + ', '.join(f'{n} devices: {s}' for n, s in plan['winners'].items()), '']
  lines += sensitivity_lines(plan.get('sensitivity'))
  lines += ['',
            '## Compiled bytes against the formula, per layer', '',
            'MB per device per step, compiled / formula; every layer that differs, and every '
            'collective the compiler combined or added, is named below the table.', '',
            '| strategy | devices | ' + ' | '.join(LAYERS) + f' | {LOSS} |',
            '|---|---|' + '---|' * (len(LAYERS) + 1)]
  for r in plan['runs']:
    e = r['explanations']['layers']
    cells = [f'{_mb(e[l]["compiled_bytes"])} / {_mb(e[l]["analytic_bytes"])}' if l in e else '-'
             for l in LAYERS + (LOSS,)]
    lines.append(f'| {r["strategy"]} | {r["devices"]} | ' + ' | '.join(cells) + ' |')
  lines += ['']
  for r in plan['runs']:
    e = r['explanations']
    notes = [f'{layer}: {"; ".join(x["notes"])}' for layer, x in e['layers'].items()
             if x['notes']]
    notes += [f'combined: {c["kind"]} {name} carries {c["arrays"]} arrays of '
              f'{", ".join(c["layers"])} (attributed by {" and ".join(c["attributed_by"])})'
              for name, c in e['combined'].items()]
    if notes:
      lines.append(f'- **{r["strategy"]} / {r["devices"]}**: ' + ' | '.join(notes))
  lines += ['', '## Profile', '', '| field | value | source |', '|---|---|---|']
  for field, value in list(p['numbers'].items()) + [('inside', p['inside']),
                                                    ('between', p['between'])]:
    lines.append(f'| {field} | {value} | {p["sources"].get(field, "-")} |')
  return '\n'.join(lines) + '\n'


def sensitivity_lines(sens: Optional[dict]) -> list[str]:
  """The sensitivity table: the winner at each size for every efficiency and latency scale."""
  if not sens or not sens['grid']:
    return []
  sizes = list(sens['grid'][0]['winners'])
  lines = ['## Sensitivity of the winners', '',
           'The winner at each size when the compute efficiency is scaled (rows) and every '
           'link\'s latency is scaled (columns); the plan\'s own point is efficiency x1, latency '
           'x1.', '',
           '| efficiency | latency | ' + ' | '.join(f'{n} devices' for n in sizes) + ' |',
           '|---|---|' + '---|' * len(sizes)]
  for g in sens['grid']:
    lines.append(f'| x{g["efficiency_scale"]} | x{g["latency_scale"]} | '
                 + ' | '.join(g['winners'].get(n, '-') for n in sizes) + ' |')
  flips = sens['flips']
  if flips:
    where = sorted({(f['devices'], f['plan_winner'], f['winner']) for f in flips})
    lines += ['', 'The ranking flips at: ' + '; '.join(
        f'{n} devices ({a} -> {b} at ' + ', '.join(
            f'efficiency x{f["efficiency_scale"]} latency x{f["latency_scale"]}'
            for f in flips if (f['devices'], f['plan_winner'], f['winner']) == (n, a, b)) + ')'
        for n, a, b in where) + '.']
  else:
    lines += ['', 'No winner changes anywhere in this range.']
  return lines + ['']


def chart_figure(plan: dict):
  """plan.png's Figure: PREDICTED images/s per device (with overlap) per strategy against the
  device count (log2 axis, ticks at the counts), with the hosts' input ceiling per device (flat
  lines scale perfectly); below, communication's PREDICTED share of the step (no overlap)."""
  # matplotlib (and the Pillow it reads images with) is imported here, an optional dependency:
  # a GPU machine that only measures may not have them (see write).
  from alexnet_jax.report import charts  # pylint: disable=g-import-not-at-top
  by = {}
  for r in plan['runs']:
    by.setdefault(r['strategy'], []).append(r)
  series, shares = [], []
  for name, rs in by.items():
    rs = sorted(rs, key=lambda r: r['devices'])
    xs = [r['devices'] for r in rs]
    series.append((name, xs, [r['predicted_images_per_second']['with_overlap'] / r['devices']
                              for r in rs]))
    shares.append((name, xs, [100 * r['predicted_communication_seconds'] /
                              r['predicted_step_seconds']['no_overlap'] for r in rs]))
  ceiling = sorted({(r['devices'], r['input_images_per_second'] / r['devices'])
                    for r in plan['runs'] if 'input_images_per_second' in r})
  if ceiling:
    series.append(('host input ceiling', [n for n, _ in ceiling], [c for _, c in ceiling]))
  fig, (top, bottom) = charts.figure(900, 760, 2, height_ratios=(1.25, 1))
  label = plan['label'] if 'PREDICTED' in plan['label'] else f'PREDICTED: {plan["label"]}'
  fig.suptitle(label, fontsize=charts.TITLE_SIZE, x=0.01, ha='left')
  charts.lines(top, 'PREDICTED images/s per device (with overlap)', series, x_label='devices',
               y_label='images/s per device', devices=True, y_min=0)
  charts.lines(bottom, 'PREDICTED communication, % of the step without overlap', shares,
               x_label='devices', y_label='% of the step', devices=True)
  bottom.set_ylim(0, 100)
  return fig


def chart(plan: dict) -> bytes:
  """plan.png (chart_figure, drawn with matplotlib)."""
  from alexnet_jax.report import charts  # pylint: disable=g-import-not-at-top
  return charts.png(chart_figure(plan))


def write(plan: dict, out_dir: str) -> None:
  """plan.json, plan.md and plan.png (without matplotlib or Pillow installed, plan.png is left
  out and plan.md says so: the JAX images lent for measuring carry neither)."""
  write_report(out_dir, 'plan', plan, markdown, chart, chart_optional=True)


# --- What the command (alexnet_jax/plan.py) reads, and the plan it makes. ---

# Images/s one CPU core feeds through the training pipeline on ImageNet-like JPEGs (bench_input,
# 2026-11-26, docs/performance.md): augmenting on the host or leaving it to the device, and from
# the 256 x 256 squares written once (config.resized 'jpeg' or 'raw'). What the plan's input
# ceiling assumes unless given --bench_input.
INPUT_PER_CORE = {'host': 355.0, 'device': 395.0, 'jpeg': 1712.0, 'raw': 2517.0}


def input_per_core(path: str) -> dict:
  """Images/s per core by input path ('host', 'device', 'jpeg', 'raw'): from a
  bench_input.json where it has the row, else the defaults. A file that cannot be read or is not
  a bench_input.json is refused (errors.Refused, one line naming it): it is read before any work."""
  rates = dict(INPUT_PER_CORE)
  if path:
    try:
      name = paths.join(path, 'bench_input.json') if paths.isdir(path) else path
      per_core = json.loads(paths.read_text(name))['per_core']
      found = {key: float(per_core[row]) for key, row in (
          ('host', 'pipeline'), ('device', 'pipeline_device_augment'),
          ('jpeg', 'pipeline_256'), ('raw', 'pipeline_raw')) if row in per_core}
    except OSError as e:
      raise errors.Refused(f'--bench_input={path}: {name} cannot be read '
                           f'({e.strerror or e})') from e
    except (ValueError, KeyError, TypeError) as e:  # not JSON, no per_core, not numbers
      raise errors.Refused(f'--bench_input={path}: {name} is not a bench_input.json with '
                           f'per-core rates ({type(e).__name__}: {e})') from e
    rates.update(found)
  return rates


def run_plan(config: ml_collections.ConfigDict, target: str, counts: Sequence[int],
             strategies: Optional[Sequence[str]], *, out: str, batch_per_replica: int = 128,
             efficiency: float = ASSUMED_EFFICIENCY, calibration: Optional[dict] = None,
             input_rates: Optional[dict] = None, measure_steps: int = 0,
             cache_dir: Optional[str] = None, compare_overlap: bool = False) -> dict:
  """The plan of `config` on `target`, written to `out` (plan.json, plan.md, plan.png); with a
  `calibration` (a loaded file, calibration.load_calibration) the efficiency is fitted to it;
  with `measure_steps`, on a machine with the target's chips, the planned steps that fit are run
  and measured beside the prediction. Refuses (TargetError) a target it cannot compile for,
  before compiling anything."""
  if not measure_steps:
    quiet.compile_only_environment()
    jax.config.update('jax_platforms', 'cpu')
  profile = targets_lib.load(target)
  # A compute dtype the profile has no rate for (float16 without peak_fp16_flops) is refused
  # before anything is compiled.
  costmodel.compute_peak(profile, config.model.dtype)
  why = targets_lib.compiler_missing(profile)
  if why:
    raise targets_lib.TargetError(why)
  source, links = 'assumed', ''
  if calibration is not None:
    if calibration['runs'] or not calibration.get('collectives'):
      efficiency, source = calibration_lib.calibrated_efficiency(calibration, config, profile,
                                                                 cache_dir or None)
    else:
      print('the calibration file measured collectives only: the efficiency stays assumed')
    # The file's measured links, where they are the target's (else ignored, with a line).
    profile, links = calibration_lib.measured_bus_bandwidth(calibration, profile)
  result = make_plan(config, profile, counts, strategies=strategies,
                     batch_per_replica=batch_per_replica, efficiency=efficiency,
                     efficiency_source=source,
                     input_per_core=input_rates if input_rates is not None else input_per_core(''),
                     cache_dir=cache_dir or None, compare_overlap=compare_overlap)
  if links:
    result['links_source'] = links
    result['label'] += f'; links: {links}'
  if measure_steps:
    local = jax.devices()
    if local[0].platform == profile.compiler:  # a real GPU or TPU of the target's kind
      measure_beside(result, config, local, steps=measure_steps)
    else:
      result['measured'] = (f'nothing measured: this process has {local[0].platform} devices, '
                            f'not {profile.compiler}')
      print(result['measured'])
  write(result, out)
  print(markdown(result))
  return result
