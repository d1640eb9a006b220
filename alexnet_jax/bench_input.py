"""`python -m alexnet_jax.bench_input`: The input pipeline's speed per CPU core against JPEG decoding (alexnet_jax/perf/bench_input.py)."""

from alexnet_jax.runtime import allocator
from alexnet_jax.perf import bench_input

if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  bench_input.cli()
