"""`python -m alexnet_jax.comms`: The communication report: what every strategy moves per training step (alexnet_jax/perf/comms.py); with --target, the pod plan (alexnet_jax/pods/plan.py)."""

import sys

from alexnet_jax.runtime import quiet

if __name__ == '__main__':
  target = quiet.compile_only(sys.argv)
  if target:
    quiet.compile_only_environment()
  with quiet.held_stderr(enabled=target):
    # Imported here, not above: with --target, what JAX, TensorFlow and the compilers print as
    # they load is held back too (alexnet_jax/runtime/quiet.py).
    from alexnet_jax.runtime import allocator  # pylint: disable=g-import-not-at-top
    from alexnet_jax.perf import comms  # pylint: disable=g-import-not-at-top
    allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
    comms.cli()
