"""The paper's design claims as ablations: each measured on your data and hardware.

    python -m alexnet_jax.ablate --config=configs/ablations.py \
        --variants=lrn,overlap,one_tower,pca,tencrop --workdir=DIR

trains the baseline (the config, which has the paper's setting of every switch) and one run per
variant, each with ONE switch turned off and everything else equal: the same seed (the same
initialisation where the shapes agree, the same batches in the same order, the same dropout
units), the same data and the same number of steps. Then it writes DIR/ablations.md and
DIR/ablations.json: each run's top-1 / top-5 error on the evaluation split (centre crop), its
parameter and FLOP counts, the delta against the baseline, and the paper's delta beside it.

    variant  what the run changes                       paper (top-1 / top-5 points)
    lrn      model.lrn = False (no LRN)                 -1.4 / -1.2   (section 3.3)
    overlap  model.pool_window = pool_stride = 2        -0.4 / -0.3   (section 3.4)
    one_tower model.num_towers = 1: one tower, half    -1.7 / -1.2   (section 3.2)
             the kernels (model.one_tower_widths); run
             data-parallel on the same devices
    pca      pca_lighting_std = 0 (no colour noise)     over -1 top-1 (section 4.1)
    dropout  model.dropout_rate = 0                     no number     (section 4.2)
    tencrop  the baseline's final parameters evaluated  -1.5 / -1.3   (37.5 / 17.0 against
             on the ten patches instead of the centre:                 39.0 / 18.3, ILSVRC-2010)
             a test-time change, nothing is trained

A delta is the error WITH the paper's choice minus the error WITHOUT it, in points: negative
when the choice helps, like the paper's numbers. Every run is evaluated on the centre crop
(the runner sets eval_crops and final_eval_crops to 'center'); only `tencrop` uses ten.

Resumable: each run is an ordinary training workdir, DIR/<name> (config.json, metrics.jsonl,
checkpoints). A run that ends writes DIR/<name>/result.json and is never trained again; one
stopped midway resumes from its last checkpoint. A finished run whose config differs from the
one this command would train is refused (use another DIR), so a table never mixes budgets.

On a cluster: `--only=NAME` trains that one run (baseline or a variant) and exits, so each can
be its own job sharing DIR; the same command without --only then writes the table.
"""

import dataclasses
import datetime
import json
import os
from typing import Optional, Sequence

from absl import logging
import jax
import ml_collections

from alexnet_jax.runtime import errors
from alexnet_jax.runtime import fields
from alexnet_jax.runtime import paths
from alexnet_jax.runtime import workdir_lock
from alexnet_jax.core import checkpointing
from alexnet_jax.core import config as config_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.data import pipeline
from alexnet_jax.data import spec as data_spec
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from alexnet_jax.core import train

BASELINE = 'baseline'


@dataclasses.dataclass(frozen=True)
class Variant:
  """One switch turned off: the config fields it sets, and what the paper measured."""
  name: str
  change: str  # what differs from the baseline, in words
  overrides: dict  # dotted config field -> the ablated value
  paper: tuple  # (top-1, top-5) delta in points, paper's choice minus without; None: not given
  source: str
  eval_crops: str = ''  # set: the baseline's parameters evaluated this way, nothing trained


VARIANTS = {v.name: v for v in (
    Variant('lrn', 'no LRN after conv1, conv2', {'model.lrn': False}, (-1.4, -1.2),
            'section 3.3'),
    Variant('overlap', 'max pooling 2 x 2, stride 2 (not overlapping)',
            {'model.pool_window': 2, 'model.pool_stride': 2}, (-0.4, -0.3), 'section 3.4'),
    Variant('one_tower', 'one tower, half the kernels (conv5, fc6, fc7 full width)',
            {'model.num_towers': 1}, (-1.7, -1.2), 'section 3.2'),
    Variant('pca', 'no PCA colour noise', {'pca_lighting_std': 0.0}, (-1.0, None),
            'section 4.1: "over 1%" top-1'),
    Variant('dropout', 'no dropout on fc6, fc7', {'model.dropout_rate': 0.0}, (None, None),
            'section 4.2: "substantial overfitting" without; no number'),
    Variant('tencrop', 'ten patches at test, not the centre one (no training)', {},
            (-1.5, -1.3), 'section 6: 37.5 / 17.0 against 39.0 / 18.3 (ILSVRC-2010 test)',
            eval_crops='ten'),
)}
DEFAULT_VARIANTS = ('lrn', 'overlap', 'one_tower', 'pca', 'tencrop')


class AblationError(errors.Refused, ValueError):
  """A request the runner refuses before training anything: the message says what to do."""


def baseline_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config as given, evaluated on the centre crop (the tencrop variant is the other)."""
  config = config.copy_and_resolve_references()
  config.eval_crops = config.final_eval_crops = 'center'
  return config


def variant_config(baseline: ml_collections.ConfigDict, variant: Variant
                   ) -> ml_collections.ConfigDict:
  """The baseline with the variant's switch turned off; one tower runs data-parallel on the
  devices the two towers used under towers and towers_data (a `tower` mesh axis needs two
  towers); hybrid runs one tower as Krizhevsky 2014 did and stays hybrid."""
  config = baseline.copy_and_resolve_references()
  for field, value in variant.overrides.items():
    fields.set(config, field, value)
  if config.model.num_towers == 1 and config.parallelism in strategies.TOWER_STRATEGIES:
    config.num_devices = strategies.resolve_num_devices(config.parallelism, config.num_devices,
                                                        jax.device_count())
    config.parallelism = 'data'
  return config


def check_request(baseline: ml_collections.ConfigDict, names: Sequence[str]) -> None:
  """Unknown variants, and variants that would equal the baseline, are refused."""
  for name in names:
    if name not in VARIANTS:
      raise AblationError(f'Unknown variant {name!r}; choose from {", ".join(VARIANTS)}.')
    overrides = VARIANTS[name].overrides
    if overrides and all(fields.get(baseline, f) == v for f, v in overrides.items()):
      named = ', '.join(f'config.{f}={v!r}' for f, v in overrides.items())
      raise AblationError(
          f'Variant {name} sets {named}, but the baseline config already has that, so the '
          "variant would equal the baseline. Give the baseline the paper's setting "
          f'(configs/ablations.py does), or leave {name} out of --variants.')


def _read_result(run_dir: str, config: ml_collections.ConfigDict) -> Optional[dict]:
  """The finished run's result.json, None if it has not finished; refuses another config's."""
  path = paths.join(run_dir, 'result.json')
  if not paths.exists(path):
    return None
  result = json.loads(paths.read_text(path))
  saved, wanted = result['config'], fields.plain(config)
  if saved != wanted:
    flat = lambda d, p='': ({k: v for key, sub in d.items()
                             for k, v in flat(sub, f'{p}{key}.').items()}
                            if isinstance(d, dict) else {p[:-1]: d})
    s, w = flat(saved), flat(wanted)
    diff = [f'{k}: {s.get(k)!r} there, {w.get(k)!r} now' for k in sorted(set(s) | set(w))
            if s.get(k) != w.get(k)]
    raise AblationError(
        f'{run_dir} finished with another config ({"; ".join(diff[:5])}); a table must compare '
        'runs of one budget. Use another --workdir, or delete that run to retrain it.')
  return result


def _write_json(path: str, value) -> None:
  """Written whole or not at all: a run counts as finished only once its result is complete."""
  paths.replace_text(path, json.dumps(value, indent=2))


def model_cost(config: ml_collections.ConfigDict) -> dict:
  """Parameters and forward FLOPs per image (2 per multiply-add, model.layer_macs)."""
  net = model_lib.make_network(config.model, config.model.num_classes)
  return {'params': model_lib.param_count(net, config.image_size),
          'forward_flops': 2 * sum(model_lib.layer_macs(net, config.image_size).values())}


def evaluate_checkpoint(config: ml_collections.ConfigDict, run_dir: str, crops: str) -> dict:
  """The latest checkpoint of a finished run, evaluated with `crops` ('center' or 'ten')."""
  data = pipeline.open(data_spec.from_config(config)).prepare()
  run = run_lib.build(config)
  _, params = checkpointing.restore_params(run_dir)
  params = jax.device_put(params, run.state_sharding.params)
  return train.evaluate(run, params, data, crops=crops)


def run_one(name: str, config: ml_collections.ConfigDict, workdir: str,
            baseline: Optional[ml_collections.ConfigDict] = None) -> dict:
  """Trains (or, for an eval-only variant, evaluates the baseline's parameters) unless done."""
  run_dir = paths.join(workdir, name)
  variant = VARIANTS.get(name)
  result = _read_result(run_dir, config)
  if result is not None:
    logging.info('%s: finished before (%s), not run again.', name, run_dir)
    return result
  if variant is not None and variant.eval_crops:
    source = paths.join(workdir, BASELINE)
    if _read_result(source, baseline) is None:
      raise AblationError(f'{name} evaluates the baseline\'s parameters, but {source} has not '
                          'finished; train the baseline first (--only=baseline).')
    paths.makedirs(run_dir)
    metrics = evaluate_checkpoint(baseline, source, variant.eval_crops)
  else:
    logging.info('%s: training into %s.', name, run_dir)
    metrics = train.train_and_evaluate(config, run_dir)
    if not metrics:  # trained to the end earlier, stopped before result.json: evaluate again
      metrics = evaluate_checkpoint(config, run_dir, 'center')
  result = {'name': name, **{k: float(v) for k, v in metrics.items()},
            **model_cost(config), 'config': fields.plain(config)}
  _write_json(paths.join(run_dir, 'result.json'), result)
  return result


def configs_for(config: ml_collections.ConfigDict, names: Sequence[str]
                ) -> dict[str, ml_collections.ConfigDict]:
  """{run name: its config}: the baseline first, then the variants in the order asked."""
  baseline = baseline_config(config)
  check_request(baseline, names)
  out = {BASELINE: baseline}
  for name in names:
    variant = VARIANTS[name]
    if variant.eval_crops:
      out[name] = baseline.copy_and_resolve_references()
      out[name].eval_crops = out[name].final_eval_crops = variant.eval_crops
    else:
      out[name] = variant_config(baseline, variant)
  return out


def table(results: dict[str, dict], names: Sequence[str]) -> dict:
  """The rows of ablations.json: errors in percent and the deltas, beside the paper's."""
  base = results[BASELINE]
  err = lambda r, k: 100.0 * (1.0 - r[f'val_top{k}'])
  rows = [{'name': BASELINE, 'change': "the paper's setting of every switch",
           'params': base['params'], 'forward_flops': base['forward_flops'],
           'top1_error': err(base, 1), 'top5_error': err(base, 5)}]
  for name in names:
    r, v = results[name], VARIANTS[name]
    # With the paper's choice minus without: the baseline minus the variant, except for
    # tencrop, whose run IS the paper's choice (ten patches) and the baseline the centre crop.
    with_, without = (r, base) if v.eval_crops else (base, r)
    rows.append({'name': name, 'change': v.change, 'params': r['params'],
                 'forward_flops': r['forward_flops'],
                 'top1_error': err(r, 1), 'top5_error': err(r, 5),
                 'delta_top1': err(with_, 1) - err(without, 1),
                 'delta_top5': err(with_, 5) - err(without, 5),
                 'paper_delta_top1': v.paper[0], 'paper_delta_top5': v.paper[1],
                 'paper_source': v.source})
  return {'rows': rows, 'eval_images': int(base['val_examples'])}


def describe_setup(config: ml_collections.ConfigDict) -> dict:
  """What the numbers were measured on: the budget, the data, the date and the hardware."""
  cpu = ''
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')),
                 '')
  device = jax.devices()[0]
  hardware = (f'{jax.device_count()} simulated CPU devices on {os.cpu_count()} cores of {cpu}'
              if device.platform == 'cpu' else f'{jax.device_count()} x {device.device_kind}')
  return {'date': datetime.date.today().isoformat(), 'dataset': config.dataset,
          'image_size': config.image_size, 'num_train_steps': config.num_train_steps,
          'num_epochs': config.num_epochs, 'batch_size': config.batch_size, 'seed': config.seed,
          'parallelism': config.parallelism, 'hardware': hardware}


def _fmt(value: Optional[float], sign: bool = False) -> str:
  if value is None:
    return '-'
  return f'{value:+.1f}' if sign else f'{value:.1f}'


def markdown(result: dict) -> str:
  """The table of ablations.md."""
  setup, rows = result['setup'], result['rows']
  budget = (f'{setup["num_train_steps"]} steps' if setup['num_train_steps'] > 0
            else f'{setup["num_epochs"]} epochs')
  lines = [
      f'Ablations on {setup["dataset"]} ({setup["image_size"]} px crops), {budget} of batch '
      f'{setup["batch_size"]} per run, seed {setup["seed"]}, {setup["parallelism"]}; '
      f'{setup["date"]}, {setup["hardware"]}. Error in % on {result["eval_images"]} evaluation '
      'images (centre crop; tencrop: ten patches). Delta: error with the paper\'s choice minus '
      'without it, in points (negative: the choice helps).',
      '',
      '| run | what differs | params | forward GFLOP/image | top-1 err | top-5 err | '
      'delta top-1 / top-5 | paper delta top-1 / top-5 |',
      '|---|---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    delta = (f'{_fmt(r["delta_top1"], True)} / {_fmt(r["delta_top5"], True)}'
             if 'delta_top1' in r else '')
    paper = (f'{_fmt(r["paper_delta_top1"], True)} / {_fmt(r["paper_delta_top5"], True)}'
             if 'paper_source' in r else '')
    lines.append(f'| {r["name"]} | {r["change"]} | {r["params"]:,} | '
                 f'{r["forward_flops"] / 1e9:.3g} | {_fmt(r["top1_error"])} | '
                 f'{_fmt(r["top5_error"])} | {delta} | {paper} |')
  n = max(result['eval_images'], 1)
  p = rows[0]['top1_error'] / 100
  se = 100 * (p * (1 - p) / n) ** 0.5
  lines += ['', f'Noise: which {n} images are evaluated alone gives the baseline\'s top-1 error '
            f'a standard error of about {se:.1f} points (binomial), {2 ** 0.5 * se:.1f} for a '
            'delta; the spread between training runs of different seeds is not in that and is '
            'often larger on short budgets (rerun with another --config.seed into another '
            'workdir to see it). Paper: ImageNet, 90 epochs, '
            + '; '.join(f'{r["name"]}: {r["paper_source"]}' for r in rows[1:]) + '.']
  return '\n'.join(lines) + '\n'


def run(config: ml_collections.ConfigDict, names: Sequence[str], workdir: str,
        only: str = '') -> Optional[dict]:
  """Trains what is missing (only `only`, if given) and writes the table; returns it, or None
  with --only."""
  configs = configs_for(config, names)
  if only and only not in configs:
    raise AblationError(f'--only={only} is not one of the runs asked for: {", ".join(configs)}.')
  for c in configs.values():  # every run checked before the first one trains
    config_lib.check(c, jax.devices())
  workdir = paths.absolute(workdir)
  # The directory for the whole run, before anything is written there: a second ablate on it is
  # refused (exit 2). Not with --only, whose jobs (one per run) share DIR: each training run
  # below it holds its own sub-workdir (train.train_and_evaluate, a different lock file), so two
  # jobs never train one run at once (runtime/workdir_lock.py).
  if only:
    paths.makedirs(workdir)
    return _run_locked(configs, names, workdir, only)
  with workdir_lock.acquire(workdir):
    return _run_locked(configs, names, workdir, only)


def _run_locked(configs: dict[str, ml_collections.ConfigDict], names: Sequence[str],
                workdir: str, only: str) -> Optional[dict]:
  """run's work, with `workdir` held."""
  for name, c in configs.items():
    cost = model_cost(c)
    print(f'{name:9s} {cost["params"]:>12,} parameters  '
          f'{cost["forward_flops"] / 1e9:8.3g} GFLOP forward per image', flush=True)
  results = {}
  for name, c in configs.items():
    if only and name != only:
      continue
    results[name] = run_one(name, c, workdir, baseline=configs[BASELINE])
  if only:
    return None
  result = {'setup': describe_setup(configs[BASELINE]), **table(results, names)}
  _write_json(paths.join(workdir, 'ablations.json'), result)
  paths.write_text(paths.join(workdir, 'ablations.md'), markdown(result))
  return result
