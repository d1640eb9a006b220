"""`python -m alexnet_jax.figures`: The paper's figures from a training workdir (alexnet_jax/paper/figures.py)."""

from alexnet_jax.runtime import allocator
from alexnet_jax.paper import figures

if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  figures.cli()
