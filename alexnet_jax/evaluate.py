"""`python -m alexnet_jax.evaluate --workdir=DIR [--workdir=DIR2 ...]`: evaluates checkpoints without training, one network or the average of several (the paper's Table 2; alexnet_jax/paper/evaluate.py)."""

from alexnet_jax.runtime import allocator
from alexnet_jax.paper import evaluate

if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  evaluate.cli()
