"""`python -m alexnet_jax.bench`: Throughput of the real train step against what the same devices can do (alexnet_jax/perf/bench.py)."""

from alexnet_jax.runtime import allocator
from alexnet_jax.perf import bench

if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  bench.cli()
