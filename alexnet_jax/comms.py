"""`python -m alexnet_jax.comms`: The communication report: what every strategy moves per training step (alexnet_jax/tools/comms.py)."""

from alexnet_jax.runtime import allocator
from alexnet_jax.tools import comms

if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  comms.cli()
