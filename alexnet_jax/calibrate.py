"""`python -m alexnet_jax.calibrate`: one device's measured train step (images/s, MFU, per-op times from a profiler trace) for `plan --calibration` to fit its efficiency to (alexnet_jax/pods/calibration.py)."""

from alexnet_jax.runtime import allocator
from alexnet_jax.pods import calibration as calibration_lib

if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  calibration_lib.cli()
