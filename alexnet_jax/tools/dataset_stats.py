"""`python -m alexnet_jax.dataset_stats --config=configs/paper.py` (alexnet_jax/dataset_stats.py):
computes (or finds) the training-set statistics the config needs (the mean image, the RGB
principal components) and prints where they are. The arithmetic and the file format:
alexnet_jax/data/stats.py."""

from absl import flags
from ml_collections import config_flags
import ml_collections
import numpy as np

from alexnet_jax.core import config as config_lib
from alexnet_jax.data import input_pipeline
from alexnet_jax.runtime import command


def dataset_stats(config: ml_collections.ConfigDict):
  """(the statistics, the file they are cached in) of the config's training set, computed once.
  ConfigError for data fields the input pipeline refuses, DatasetNotReadyError for a dataset that
  is not there; both before anything is computed or written."""
  config_lib.check_data(config)
  builder = input_pipeline.prepare_dataset(config)
  return input_pipeline.load_or_compute_stats(config, builder)


def report(stats, path: str) -> str:
  with np.printoptions(precision=4, suppress=True):
    return (f'{path}\n  images: {stats.num_images}\n  mean RGB ([0, 255]): {stats.mean_rgb}\n'
            f'  eigenvalues ([0, 1] pixels): {stats.eigval}\n  eigenvectors (columns):\n'
            f'{stats.eigvec}')


def main(argv) -> None:
  config = config_lib.command_config(flags.FLAGS.config, argv)
  print(report(*dataset_stats(config)))


def cli() -> None:
  """`python -m alexnet_jax.dataset_stats`: the flags, then `main` (runtime/command.py)."""
  config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=True)
  command.run(main)
