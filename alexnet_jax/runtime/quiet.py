"""A compile-only process: told so before JAX starts, and silent about the chips it lacks.

`python -m alexnet_jax.comms --target=...` compiles for a TPU slice or GPU nodes on a machine
without them. Merely importing JAX with the CUDA plugin installed makes it print that it found no
CUDA driver, and libtpu, loaded without TPUs, looks for the TPU VM's metadata and complains about
the missing worker names. Neither says anything about the compile. So the process runs on the
CPU, libtpu is told this host is the only worker, there is no metadata server and no chip to lock, and whatever
native code writes to stderr is held back, and shown only if the run fails.
"""

import contextlib
import os
import sys
import tempfile
from typing import Iterator, Sequence


def compile_only(argv: Sequence[str]) -> bool:
  """Whether a command line asks for a target (`--target=NAME`, or `--target NAME`) and nothing
  to run (no `--measure_steps=N` with N > 0, which runs the steps on this machine's chips)."""
  target = any((a.startswith('--target=') and len(a) > len('--target=')) or
               (a == '--target' and i + 1 < len(argv)) for i, a in enumerate(argv))
  measure = any(a.startswith('--measure_steps=') and a.split('=', 1)[1] not in ('', '0')
                for a in argv)
  return target and not measure


def compile_only_environment() -> None:
  """Before JAX starts a backend: this process runs on the CPU, and libtpu only compiles."""
  os.environ['JAX_PLATFORMS'] = 'cpu'
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-4')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  # libtpu locks /tmp/libtpu_lockfile so that one process drives the chips; a process that only
  # compiles drives none, and two plans (or a plan and the tests) may run side by side.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')


@contextlib.contextmanager
def held_stderr(enabled: bool = True) -> Iterator[None]:
  """Holds back everything written to file descriptor 2 (native libraries' logs included) in the
  block, and writes it out if the block fails (an exception, or an exit with an error code)."""
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    failed = True
    try:
      yield
      failed = False
    except SystemExit as e:
      failed = e.code not in (0, None)
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      if failed:
        held.seek(0)
        os.write(2, held.read())
