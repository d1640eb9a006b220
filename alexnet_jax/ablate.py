"""`python -m alexnet_jax.ablate`: The paper's design claims as ablations, trained and tabulated (alexnet_jax/paper/ablate.py)."""

from alexnet_jax.runtime import allocator
from alexnet_jax.paper import ablate

if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  ablate.cli()
