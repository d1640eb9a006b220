"""`python -m alexnet_jax.resize_dataset --config=configs/paper.py`: writes, once, the config's
training and evaluation images cut to the paper's resize_size square into a tfds dataset beside
the source (alexnet_jax/data/resized_dataset.py), with the statistics the config needs, and prints
the override that trains from it. `--config.resized=raw` for raw pixels; 'jpeg' (the default
here) otherwise. `main` with `--config.resized=...` does the same on first use."""

import os

from absl import flags
from ml_collections import config_flags
import ml_collections
import tensorflow as tf

from alexnet_jax.core import config as config_lib
from alexnet_jax.data import pipeline
from alexnet_jax.data import spec as data_spec
from alexnet_jax.runtime import command


config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=True)


def _disk_bytes(directory: str) -> int:
  """The bytes under `directory`, through TensorFlow's file systems (a gs:// data dir too)."""
  return sum(tf.io.gfile.stat(tf.io.gfile.join(d, f)).length
             for d, _, files in tf.io.gfile.walk(directory) for f in files)


def resize_dataset(config: ml_collections.ConfigDict) -> str:
  """Writes (or finds) the resized dataset of `config` (config.resized: 'jpeg' or 'raw') and
  returns what to print. ConfigError or DatasetNotReadyError before anything is written."""
  config_lib.check_data(config)
  builder = pipeline.open(data_spec.from_config(config)).prepare().builder
  counts = ', '.join(f'{name} {split.num_examples}' for name, split in builder.info.splits.items())
  size = _disk_bytes(os.fspath(builder.data_dir))
  return (f'{builder.info.full_name} in {builder.data_dir}\n  {counts} images, '
          f'{size / 1e6:.1f} MB\n  train from it with --config.resized={config.resized}'
          + (f' --config.resized_jpeg_quality={config.resized_jpeg_quality}'
             if config.resized == 'jpeg' and config.resized_jpeg_quality != 90 else ''))


def main(argv) -> None:
  config = config_lib.command_config(flags.FLAGS.config, argv)
  if not config.resized:
    config.resized = 'jpeg'
  print(resize_dataset(config))


if __name__ == '__main__':
  command.run(main, config_lib.parse_flags)
