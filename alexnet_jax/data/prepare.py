"""Opening and preparing the dataset a spec names, refusing first what cannot work.

`open_dataset` writes nothing: it returns the builder (the dataset's metadata) or refuses with a
DatasetNotReadyError that says which files to put where, so that a run stops before it writes or
compiles anything. `prepare_dataset` then generates (synthetic_shapes) or converts (imagenet2012,
from the two tars image-net.org serves) the files on first use, tries every JPEG once
(image_check.py). With
`spec.resized`, the squares are written once from the prepared and checked source
(resized_dataset.py).
"""

from __future__ import annotations

import importlib.util
import os
import re
import tarfile

from absl import logging
import tensorflow_datasets as tfds

from alexnet_jax.data import image_check
from alexnet_jax.data import resized_dataset
from alexnet_jax.data import shapes_dataset  # noqa: F401  (registers `synthetic_shapes` with tfds)
from alexnet_jax.data.refusals import (DatasetNotReadyError, IMAGENET_MANUAL_FILES,
                                       current_command, imagenet_manual_dir, listing)
from alexnet_jax.data.spec import DataSpec
from alexnet_jax.runtime import paths

_VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG')


def data_dir(spec: DataSpec) -> str | None:
  return os.path.expanduser(spec.data_dir) if spec.data_dir else None


def _check_imagenet_manual_files(spec: DataSpec,
                                 builder: tfds.core.DatasetBuilder) -> str:
  """Raises DatasetNotReadyError, before tfds writes anything, if a tar is missing."""
  manual_dir = imagenet_manual_dir(spec, builder)
  missing = [f for f in IMAGENET_MANUAL_FILES if not paths.isfile(paths.join(manual_dir, f))]
  if missing:
    raise DatasetNotReadyError(
        f'{builder.name} is not prepared in {builder.data_dir_root} and cannot be downloaded '
        f'automatically.\n'
        f'Missing: {", ".join(missing)}\n'
        f'1. Download {" and ".join(IMAGENET_MANUAL_FILES)} from https://image-net.org '
        f'(ILSVRC2012, needs an account).\n'
        f'2. Put both files in this directory (set config.manual_dir to use another one):\n'
        f'     {manual_dir}\n'
        f'3. Re-run the same command (it converts the tars into tfds files once: hours, and '
        f'about 150 GB of disk beside the tars; later runs reuse them):\n'
        f'     {current_command()}\n'
        f'   or prepare it separately with: tfds build imagenet2012 '
        f'--data_dir={builder.data_dir_root} --manual_dir={manual_dir}')
  return manual_dir


def _tar_names(path: str) -> list[str]:
  """Member names of a tar (headers only: seeks past the data, seconds even for 150 GB)."""
  try:
    with paths.open_for_reading(path) as f, tarfile.open(fileobj=f, mode='r:') as tar:
      return [m.name for m in tar.getmembers() if m.isfile()]
  except tarfile.TarError as e:
    raise DatasetNotReadyError(f'{path} is not a readable tar archive ({e}); download it again '
                               'from https://image-net.org.') from e


def _check_imagenet_archives(manual_dir: str, builder: tfds.core.DatasetBuilder) -> None:
  """Refuses, before hours of conversion, tars that tfds's imagenet2012 would fail on late or
  silently mislabel: tfds takes each training class from a member's name (`<synset>.tar`) and
  gives the i-th validation image in sorted name order the i-th label of its list of 50,000."""
  synsets = set(builder.info.features['label'].names)
  train_path = paths.join(manual_dir, IMAGENET_MANUAL_FILES[0])
  train_names = _tar_names(train_path)
  bad = [n for n in train_names if not (n.endswith('.tar') and n[:-4] in synsets)]
  if bad or not train_names:
    raise DatasetNotReadyError(
        f'{train_path} should hold one tar per class named by its WordNet id, e.g. '
        f'n01440764.tar (the 1000 ILSVRC-2012 synsets), each holding that class\'s JPEGs '
        f'(n01440764_10026.JPEG, ...). ' +
        (f'Not ILSVRC-2012 class archives: {listing(bad)}.' if bad else 'It holds no files.'))
  val_path = paths.join(manual_dir, IMAGENET_MANUAL_FILES[1])
  val_names = _tar_names(val_path)
  numbers, bad = [], []
  for name in val_names:
    match = _VAL_NAME.fullmatch(name)
    if match:
      numbers.append(int(match.group(1)))
    else:
      bad.append(name)
  if bad or not val_names:
    raise DatasetNotReadyError(
        f'{val_path} should hold the validation JPEGs at its top level, named '
        f'ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG. ' +
        (f'Other files: {listing(bad)}.' if bad else 'It holds no files.'))
  if sorted(numbers) != list(range(1, len(numbers) + 1)):
    missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
    raise DatasetNotReadyError(
        f'{val_path} holds {len(numbers)} validation images but not ILSVRC2012_val_00000001 to '
        f'_{len(numbers):08d}: missing {listing([f"{n:08d}" for n in missing])}. tfds labels '
        f'the i-th image in name order with the i-th of the 50,000 validation labels, so a gap '
        f'would mislabel every later image; use the complete ILSVRC2012_img_val.tar.')
  if len(set(n[:-4] for n in train_names)) < len(synsets) or len(numbers) < 50_000:
    logging.warning('%s holds %d of the %d classes and %s %d of the 50,000 validation images: '
                    'a partial ImageNet.', train_path, len(train_names), len(synsets), val_path,
                    len(numbers))


def open_dataset(spec: DataSpec) -> tfds.core.DatasetBuilder:
  """The builder of `spec.dataset` (its metadata: classes, splits), writing nothing; refuses
  (DatasetNotReadyError, saying which files to put where) a dataset that is not prepared and
  cannot be prepared here, so that a run stops before it writes or compiles anything.
  With `spec.resized`, the builder of the resized squares (resized_dataset.py); the source is
  opened (and may refuse) only while they are not written yet."""
  if spec.resized:
    resized = resized_dataset.squares_builder(spec)
    if not resized.is_prepared():
      open_dataset(spec.source())
    elif resized_dataset.missing_splits(resized):
      raise DatasetNotReadyError(
          f'{resized.info.full_name} in {resized.data_dir} holds the splits '
          f'{", ".join(resized.info.splits)}, not {", ".join(resized_dataset.missing_splits(resized))}'
          f'. Delete that directory and re-run {current_command()} to write it with them.')
    return resized
  builder = tfds.builder(spec.dataset, data_dir=data_dir(spec))
  if not builder.is_prepared() and builder.name == 'imagenet2012':
    manual_dir = _check_imagenet_manual_files(spec, builder)
    _check_imagenet_archives(manual_dir, builder)
    if importlib.util.find_spec('importlib_resources') is None:
      # tfds 4.9.10 imports it to prepare its own datasets but does not declare it (Python 3.11).
      raise DatasetNotReadyError(
          'Preparing imagenet2012 with tensorflow-datasets needs the `importlib_resources` '
          'package: pip install importlib_resources, then re-run: ' + current_command())
  return builder


def prepare_dataset(spec: DataSpec,
                    builder: tfds.core.DatasetBuilder | None = None
                    ) -> tfds.core.DatasetBuilder:
  """Returns the builder of `spec.dataset` (`builder`: open_dataset's, if already opened),
  generating/preparing its files on first use and checking once that every JPEG of its training
  and evaluation splits decodes (image_check.py: DatasetNotReadyError names those that do not).
  The statistics come after (input.Input.prepare)."""
  builder = builder or open_dataset(spec)
  if spec.resized:  # written once from the prepared and checked source (resized_dataset.py)
    if not builder.is_prepared():
      source = resized_dataset.source_builder(builder.builder_config)  # open_dataset checked it
      _prepare_files(spec.source(), source)
      logging.info('Writing %s from %s into %s (once).', builder.info.full_name,
                   source.info.full_name, builder.data_dir)
      builder.download_and_prepare(download_config=resized_dataset.download_config(builder))
  else:
    _prepare_files(spec, builder)
  return builder


def _prepare_files(spec: DataSpec, builder: tfds.core.DatasetBuilder) -> None:
  """The dataset's files, generated or converted on first use, and every JPEG checked once."""
  if not builder.is_prepared():
    if builder.name == 'imagenet2012':  # open_dataset has checked the manual files
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=imagenet_manual_dir(spec, builder)))
    else:
      builder.download_and_prepare()  # synthetic_shapes: generated locally, nothing downloaded
  image_check.check_images(spec, builder)  # refuses undecodable JPEGs before a stats pass
