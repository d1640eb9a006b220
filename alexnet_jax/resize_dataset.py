"""`python -m alexnet_jax.resize_dataset --config=configs/paper.py`: writes, once, the config's
training and evaluation images cut to the paper's resize_size square into a tfds dataset beside
the source, with the statistics the config needs, and prints the override that trains from it.
`--config.resized=raw` for raw pixels; 'jpeg' (the default here) otherwise. `main` with
`--config.resized=...` does the same on first use (alexnet_jax/tools/resize_dataset.py)."""

from alexnet_jax.tools import resize_dataset

if __name__ == '__main__':
  resize_dataset.cli()
