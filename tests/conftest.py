"""Tests run on CPU with 8 simulated devices, so every strategy's mesh can be built."""

import os
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One compilation cache for this test run, shared with the subprocesses the tests start:
# compiling the same step twice costs seconds on CPU.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='alexnet_jax_test_compile_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)
