"""`python -m alexnet_jax.dataset_stats --config=configs/paper.py`: computes (or finds) the
training-set statistics the config needs (the mean image, the RGB principal components) and prints
where they are (alexnet_jax/tools/dataset_stats.py; the arithmetic and the file format:
alexnet_jax/data/stats.py)."""

from alexnet_jax.tools import dataset_stats

if __name__ == '__main__':
  dataset_stats.cli()
