"""Evaluates checkpoints without training, one network or an ensemble (the paper's Table 2).

    python -m alexnet_jax.evaluate --workdir=DIR [--workdir=DIR2 ...] [--split=validation]
        [--crops=center|ten] [--step=N] [--parallelism=data] [--num_devices=N] [--out=DIR]

The paper's Table 2 reports single networks beside the average of several networks' predictions
(section 6: "averaging the predictions of five similar CNNs"). Each workdir's checkpoint is
evaluated with the config that wrote it (dataset, data_dir, preprocessing), its parameters read
as NumPy (checkpointing.restore_params) and placed onto a run built for the devices of this
process, whatever strategy and device count trained it: evaluation depends on the parameters
only, not on how they were partitioned. With several workdirs their softmax outputs (after the
ten-patch average with --crops=ten) are averaged and scored as one more row.

Writes OUT/evaluation.json, OUT/evaluation.md (the table), OUT/<member>_probs.npy (each network's
per-example softmax, float32 [examples, classes]) and OUT/labels.npy, so that anyone can recompute
every figure with NumPy. Refusals (a missing workdir or checkpoint, members of different model
configs, statistics not cached) are one line with exit 2, before anything is evaluated.

One process: the per-example outputs are gathered on this host (a multi-process run would see
only its own rows).
"""

import dataclasses
import io
import json
import re
from typing import Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax.runtime import errors
from alexnet_jax.runtime import paths
from alexnet_jax.core import augment as augment_lib
from alexnet_jax.core import checkpointing
from alexnet_jax.core import config as config_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies
from alexnet_jax.core import train
from alexnet_jax.data import pipeline
from alexnet_jax.data import spec as data_spec
from alexnet_jax.data.refusals import DatasetNotReadyError

CROPS = ('center', 'ten')
# Model fields that do not change the function a trained network computes at evaluation: how it
# is computed (kernels, dtype), how it was initialised, its training-time dropout. Every other
# model field, the input size and the dataset must agree for an ensemble to average outputs.
_IGNORED_MODEL_FIELDS = ('kernels', 'dtype', 'init_scheme', 'head_zeroinit', 'dropout_rate')
_SHARED_FIELDS = ('dataset', 'image_size')


class EvaluateError(errors.Refused):
  """The command cannot run as given (nothing evaluated): one line saying what to do."""


@dataclasses.dataclass
class Member:
  """One network of the ensemble: its checkpoint's config and parameters (NumPy)."""
  name: str
  workdir: str
  step: int
  config: ml_collections.ConfigDict
  params: dict


@dataclasses.dataclass
class Predictions:
  """A network's per-example softmax outputs over the split, in the split's order."""
  probs: np.ndarray  # float32 [examples, classes]
  labels: np.ndarray  # int32 [examples]
  parallelism: str
  num_devices: int


# ---------------------------------------------------------------------------------------------
# Reading the workdirs (no JAX backend needed).


def saved_parallelism(workdir: str) -> tuple[str, int]:
  """(parallelism, num_devices) of the run's config.json, read before JAX starts its backend so
  that a CPU-only process can simulate the devices the checkpoint's strategy needs; the defaults
  if the workdir has no config.json."""
  path = paths.join(workdir, 'config.json')
  try:
    saved = json.loads(paths.read_text(path))
    return str(saved.get('parallelism', 'towers')), int(saved.get('num_devices', 0))
  except (OSError, ValueError, TypeError):
    defaults = config_lib.defaults()
    return defaults.parallelism, defaults.num_devices


def devices_to_simulate(workdirs: Sequence[str], parallelism: Optional[str],
                        num_devices: int) -> int:
  """The CPU devices this process must present: the most any member's strategy asks for."""
  needs = []
  for workdir in workdirs:
    saved, saved_devices = saved_parallelism(workdir)
    chosen = parallelism or saved
    count = num_devices or (saved_devices if chosen == saved else 0)
    needs.append(strategies.devices_needed(chosen, count))
  return max(needs + [1])


def member_names(workdirs: Sequence[str]) -> list[str]:
  """File-safe names for the members: the workdirs' basenames, numbered when they collide."""
  names = [re.sub(r'[^\w.-]', '_', paths.basename(w)) or 'net'
           for w in workdirs]
  if len(set(names)) < len(names):
    names = [f'{i}_{n}' for i, n in enumerate(names)]
  return names


def load_member(workdir: str, name: str, step: Optional[int]) -> Member:
  """The checkpoint (latest, or `step`) of `workdir`; EvaluateError saying what to do if the
  workdir or the checkpoint is missing or unreadable."""
  workdir = paths.absolute(workdir)
  train_it = (f'train into it first: python -m alexnet_jax.main --config=configs/quickstart.py '
              f'--workdir={workdir}')
  if not paths.isdir(workdir):
    raise EvaluateError(f'--workdir={workdir} does not exist: {train_it}')
  saved = checkpointing.saved_steps(workdir)
  if not saved:
    raise EvaluateError(f'No checkpoint in {paths.join(workdir, "checkpoints")}: {train_it} '
                        '(a run saves one every config.checkpoint_every_steps and at its end).')
  if step is not None and step not in saved:
    raise EvaluateError(f'No checkpoint {step} in {paths.join(workdir, "checkpoints")}: its '
                        f'steps are {saved}; pass one of them to --step, or leave --step out for '
                        'the latest.')
  step = saved[-1] if step is None else step
  try:
    config, params = checkpointing.restore_params(workdir, step)
  except checkpointing.CheckpointError as e:
    raise EvaluateError(str(e)) from e
  return Member(name=name, workdir=workdir, step=step, config=config, params=params)


def model_fields(config: ml_collections.ConfigDict) -> dict:
  """The fields that define what a network computes on an image (see _IGNORED_MODEL_FIELDS)."""
  fields = {f'model.{k}': v for k, v in json.loads(config.model.to_json_best_effort()).items()
            if k not in _IGNORED_MODEL_FIELDS}
  fields.update({k: json.loads(json.dumps(config[k])) for k in _SHARED_FIELDS})
  return fields


def check_same_model(members: Sequence[Member]) -> None:
  """EvaluateError naming the first field in which a member's model differs from the first
  member's: averaging softmax outputs needs one set of classes and one network shape."""
  reference = model_fields(members[0].config)
  for member in members[1:]:
    fields = model_fields(member.config)
    for field in sorted(set(reference) | set(fields)):
      if reference.get(field) != fields.get(field):
        raise EvaluateError(
            f'{member.workdir} (step {member.step}) is another model than {members[0].workdir}: '
            f'config.{field} is {fields.get(field)!r} there and {reference.get(field)!r} in the '
            'first; an ensemble averages networks of one model config: evaluate it on its own.')


# ---------------------------------------------------------------------------------------------
# The data each member is evaluated on.


def eval_config(member: Member, split: Optional[str], parallelism: str,
                num_devices: int) -> ml_collections.ConfigDict:
  """The member's config for an evaluation on `split` with `parallelism` on `num_devices`.

  The batch sizes are rounded up to a multiple of the device count: an evaluation's figures do
  not depend on its batch (the last batch is padded and masked), and a checkpoint trained on one
  device count must run on another."""
  config = ml_collections.ConfigDict(member.config.to_dict())
  if split:
    config.eval_split = split
  config.parallelism, config.num_devices = parallelism, num_devices
  n = strategies.resolve_num_devices(parallelism, num_devices, len(jax.devices()))
  for field in ('batch_size', 'eval_batch_size'):
    config[field] = -(-config[field] // n) * n
  return config


def open_prepared_dataset(config: ml_collections.ConfigDict, workdir: str) -> pipeline.Input:
  """The member's dataset, which its training prepared; EvaluateError if it is not there, or if
  the training-set statistics the config subtracts are not cached beside it (evaluation reads
  them as training does; it never computes them)."""
  try:
    data = pipeline.open(data_spec.from_config(config))
  except DatasetNotReadyError as e:
    raise EvaluateError(str(e)) from e
  if not data.builder.is_prepared():
    raise EvaluateError(f'{config.dataset} is not prepared in {config.data_dir} (the data_dir of '
                        f'{workdir}): run its training there, or move the dataset back.')
  splits = data.builder.info.splits
  if config.eval_split not in splits and config.eval_split.split('[')[0] not in splits:
    raise EvaluateError(f'--split={config.eval_split}: {config.dataset} has the splits '
                        f'{sorted(splits)}.')
  config_lib.check_dataset(config, data.num_classes)
  try:
    return data.use_cached_stats()
  except DatasetNotReadyError as e:
    raise EvaluateError(f'The training-set statistics {workdir} was trained with are not '
                        f'readable: {e}') from e


def build_run(config: ml_collections.ConfigDict, explicit: bool) -> run_lib.Run:
  """run.build for this process's devices; if the checkpoint's own strategy (not one asked for
  with --parallelism) cannot run here, `data` on every visible device instead."""
  try:
    return run_lib.build(config)
  except config_lib.ConfigError as e:
    if explicit or config.parallelism == 'data':
      raise EvaluateError(str(e).replace('\n', ' ')) from e
    logging.warning('%s cannot run here (%s); evaluating with parallelism=data.',
                    config.parallelism, str(e).splitlines()[0])
    fallback = ml_collections.ConfigDict(config.to_dict())
    fallback.parallelism, fallback.num_devices = 'data', 0
    n = len(jax.devices())
    for field in ('batch_size', 'eval_batch_size'):
      fallback[field] = -(-fallback[field] // n) * n
    try:
      return run_lib.build(fallback)
    except config_lib.ConfigError as e2:
      raise EvaluateError(str(e2).replace('\n', ' ')) from e2


# ---------------------------------------------------------------------------------------------
# Per-example outputs: what train.evaluate sums, kept per example.


def probabilities_program(run: run_lib.Run):
  """Jitted (params, batch) -> (softmax [B, C], label, mask), replicated: steps.eval_step's
  log-probabilities (one crop, or the log of the mean of the crops' softmax outputs), before its
  sums. eval_step returns only sums; an ensemble needs each example's distribution."""
  def probabilities(params, batch):
    if run.augment_on == 'device':  # as run.build's eval_step: finish the uint8 batch first
      batch = augment_lib.float_batch(batch, run.config.image_size)
    images = batch['image']
    if images.ndim == 4:
      log_probs = jax.nn.log_softmax(run.strategy.forward(params, images, None))
    else:
      crop_log_probs = jax.lax.map(
          lambda i: jax.nn.log_softmax(run.strategy.forward(params, images[:, i], None)),
          jnp.arange(images.shape[1]))
      log_probs = jax.nn.logsumexp(crop_log_probs, axis=0) - jnp.log(float(images.shape[1]))
    return jnp.exp(log_probs), batch['label'], batch['mask']

  return jax.jit(probabilities, out_shardings=run.strategy.replicated)


def predict(run: run_lib.Run, params, data: pipeline.Input, crops: str
            ) -> tuple[np.ndarray, np.ndarray]:
  """(probs [N, C] float32, labels [N]) over the run's eval split, each image once, in order:
  the same eval iterator, placement and device constants as train.evaluate."""
  group, groups = run.strategy.input_group(run.config.eval_batch_size)
  if groups != 1:
    raise EvaluateError(f'{groups} input groups: evaluate runs in one process; start it alone.')
  program = probabilities_program(run)
  # The run may have rounded the batch sizes up to its devices (build_run).
  data = data.replace(batch_size=run.config.batch_size,
                      eval_batch_size=run.config.eval_batch_size)
  batches = data.eval_batches(process_index=group, process_count=groups, crops=crops,
                              augment_on=run.augment_on)
  probs, labels = [], []
  for batch in train.prefetch_to_mesh(batches, run.batch_sharding,
                                      constants=train.device_constants(run, data)):
    p, label, mask = jax.device_get(program(params, batch))
    keep = np.asarray(mask) > 0
    probs.append(np.asarray(p, np.float32)[keep])
    labels.append(np.asarray(label, np.int32)[keep])
  return np.concatenate(probs), np.concatenate(labels)


def predict_member(member: Member, split: Optional[str], crops: str,
                   parallelism: Optional[str], num_devices: int) -> Predictions:
  """The member's per-example outputs on this process's devices (its parameters placed onto a
  run built here, whatever strategy trained them)."""
  chosen = parallelism or member.config.parallelism
  count = num_devices or (member.config.num_devices if chosen == member.config.parallelism
                          else 0)
  config = eval_config(member, split, chosen, count)
  data = open_prepared_dataset(config, member.workdir)
  run = build_run(config, explicit=parallelism is not None)
  params = run.state_from_params(member.params).params
  probs, labels = predict(run, params, data, crops)
  return Predictions(probs=probs, labels=labels, parallelism=run.config.parallelism,
                     num_devices=len(run.devices))


# ---------------------------------------------------------------------------------------------
# The figures.


def top_k(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of examples whose label is among the k most probable classes; a class tied with
  the label counts above it (as steps.top_k_correct)."""
  label_prob = probs[np.arange(len(labels)), labels]
  others_at_least = (probs >= label_prob[:, None]).sum(-1) - 1
  return float(np.mean(others_at_least < min(k, probs.shape[-1])))


def scores(probs: np.ndarray, labels: np.ndarray) -> dict:
  """Top-1 and top-5 accuracy and error, and the mean cross-entropy, of softmax outputs."""
  top1, top5 = top_k(probs, labels, 1), top_k(probs, labels, 5)
  label_prob = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
  return {'top1': top1, 'top5': top5, 'top1_error': 1.0 - top1, 'top5_error': 1.0 - top5,
          'loss': float(-np.mean(np.log(np.maximum(label_prob, 1e-30)))),
          'examples': int(len(labels))}


def ensemble_probs(all_probs: Sequence[np.ndarray]) -> np.ndarray:
  """The paper's ensemble: the mean of the networks' softmax outputs."""
  return np.mean(np.stack([np.asarray(p, np.float64) for p in all_probs]), axis=0)


def npy_bytes(array: np.ndarray) -> bytes:
  """np.save's file as bytes, for a destination that is an object (one upload, no seek)."""
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def markdown_table(result: dict) -> str:
  """Table 2's layout: one row per network and one for the ensemble."""
  lines = [f'# Evaluation: {result["dataset"]} {result["split"]}, {result["crops"]} crops, '
           f'{result["examples"]} images', '',
           '| model | step | strategy (devices) | top-1 error | top-5 error | top-1 | top-5 |',
           '|---|---|---|---|---|---|---|']
  for m in result['members']:
    lines.append(f'| {m["name"]} | {m["step"]} | {m["parallelism"]} ({m["num_devices"]}) | '
                 f'{m["top1_error"]:.2%} | {m["top5_error"]:.2%} | {m["top1"]:.2%} | '
                 f'{m["top5"]:.2%} |')
  e = result.get('ensemble')
  if e:
    lines.append(f'| **{e["name"]}** | | | **{e["top1_error"]:.2%}** | **{e["top5_error"]:.2%}** | '
                 f'**{e["top1"]:.2%}** | **{e["top5"]:.2%}** |')
  return '\n'.join(lines) + '\n'


def evaluate_workdirs(workdirs: Sequence[str], out: Optional[str] = None,
                      split: Optional[str] = None, crops: str = 'center',
                      step: Optional[int] = None, parallelism: Optional[str] = None,
                      num_devices: int = 0) -> dict:
  """Evaluates every workdir's checkpoint and, with several, their averaged softmax; writes the
  files (see the module docstring) into `out` (default: the first workdir's evaluation/) and
  returns what evaluation.json holds. Every refusal comes before any evaluation."""
  if not workdirs:
    raise EvaluateError('Give at least one --workdir=DIR of a training run.')
  if crops not in CROPS:
    raise EvaluateError(f'--crops={crops}: use one of {", ".join(CROPS)}.')
  if parallelism is not None and parallelism not in strategies.STRATEGIES:
    raise EvaluateError(f'--parallelism={parallelism}: use one of '
                        f'{", ".join(strategies.STRATEGIES)}.')
  names = member_names(workdirs)
  members = [load_member(w, n, step) for w, n in zip(workdirs, names)]
  check_same_model(members)
  for member in members:  # refuses a missing dataset or statistics before evaluating anything
    open_prepared_dataset(eval_config(member, split, member.config.parallelism, 0),
                          member.workdir)

  predictions = []
  for member in members:
    logging.info('Evaluating %s (step %d)...', member.workdir, member.step)
    predictions.append(predict_member(member, split, crops, parallelism, num_devices))
  labels = predictions[0].labels
  for member, p in zip(members[1:], predictions[1:]):
    if not np.array_equal(p.labels, labels):
      raise EvaluateError(f'{member.workdir} sees other labels on the split than '
                          f'{members[0].workdir} (another data_dir?): they cannot be averaged.')

  out = paths.absolute(out or paths.join(members[0].workdir, 'evaluation'))
  first = members[0].config
  result = {'dataset': first.dataset, 'split': split or first.eval_split, 'crops': crops,
            'examples': int(len(labels)), 'labels_file': 'labels.npy', 'members': []}
  for member, p in zip(members, predictions):
    result['members'].append({
        'name': member.name, 'workdir': member.workdir, 'step': member.step,
        'seed': member.config.seed, 'parallelism': p.parallelism, 'num_devices': p.num_devices,
        'probs_file': f'{member.name}_probs.npy', **scores(p.probs, labels)})
  if len(members) > 1:
    averaged = ensemble_probs([p.probs for p in predictions])
    result['ensemble'] = {'name': f'{len(members)} networks (softmax averaged)',
                          'members': names, **scores(averaged, labels)}
  if jax.process_index() == 0:
    paths.makedirs(out)  # out may be gs://bucket/dir (runtime/paths.py)
    paths.write_bytes(paths.join(out, 'labels.npy'), npy_bytes(labels))
    for member, p in zip(members, predictions):
      paths.write_bytes(paths.join(out, f'{member.name}_probs.npy'), npy_bytes(p.probs))
    paths.write_text(paths.join(out, 'evaluation.json'), json.dumps(result, indent=1))
    paths.write_text(paths.join(out, 'evaluation.md'), markdown_table(result))
  result['out'] = out
  return result
