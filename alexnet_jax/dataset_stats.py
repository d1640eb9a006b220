"""`python -m alexnet_jax.dataset_stats --config=configs/paper.py`: computes (or finds) the
training-set statistics the config needs (the mean image, the RGB principal components) and prints
where they are. The arithmetic and the file format: alexnet_jax/data/stats.py."""

from absl import flags
from ml_collections import config_flags
import ml_collections
import numpy as np

from alexnet_jax.core import config as config_lib
from alexnet_jax.data import pipeline
from alexnet_jax.data import spec as data_spec
from alexnet_jax.data import stats as stats_lib
from alexnet_jax.runtime import command


config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=True)


def dataset_stats(config: ml_collections.ConfigDict):
  """(the statistics, the file they are cached in) of the config's training set, computed once.
  ConfigError for data fields the input pipeline refuses, DatasetNotReadyError for a dataset that
  is not there; both before anything is computed or written."""
  config_lib.check_data(config)
  data = pipeline.open(data_spec.from_config(config)).prepare(with_stats=True)
  return data.train_stats, data.stats_path


def report(train_stats: stats_lib.DatasetStats, path: str) -> str:
  with np.printoptions(precision=4, suppress=True):
    return (f'{path}\n  images: {train_stats.num_images}\n'
            f'  mean RGB ([0, 255]): {train_stats.mean_rgb}\n'
            f'  eigenvalues ([0, 1] pixels): {train_stats.eigval}\n  eigenvectors (columns):\n'
            f'{train_stats.eigvec}')


def main(argv) -> None:
  config = config_lib.command_config(flags.FLAGS.config, argv)
  print(report(*dataset_stats(config)))


if __name__ == '__main__':
  command.run(main, config_lib.parse_flags)
