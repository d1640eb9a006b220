"""`python -m alexnet_jax.dataset_stats --config=configs/paper.py`: computes (or finds) the
training-set statistics the config needs (the mean image, the RGB principal components) and prints
where they are. The arithmetic and the file format: alexnet_jax/data/stats.py."""

from absl import app
from ml_collections import config_flags
import numpy as np

from alexnet_jax.core import config as config_lib
from alexnet_jax.data import input_pipeline

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=True)


def main(argv) -> None:
  config = config_lib.command_config(_CONFIG.value, argv)
  try:
    builder = input_pipeline.prepare_dataset(config)
    stats, path = input_pipeline.load_or_compute_stats(config, builder)
  except input_pipeline.DatasetNotReadyError as e:
    raise SystemExit(f'error: {e}')
  np.set_printoptions(precision=4, suppress=True)
  print(f'{path}\n  images: {stats.num_images}\n  mean RGB ([0, 255]): {stats.mean_rgb}\n'
        f'  eigenvalues ([0, 1] pixels): {stats.eigval}\n  eigenvectors (columns):\n'
        f'{stats.eigvec}')


if __name__ == '__main__':
  app.run(main)
