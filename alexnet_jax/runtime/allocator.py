"""Host memory: keep XLA:CPU's per-step buffers in the heap instead of fresh pages every step.

XLA:CPU allocates each execution's temporary buffer with malloc on a worker thread: hundreds of
MB per device for the paper's network. glibc serves a block that large from a fresh mapping
(`mmap`, also on a worker thread's own arena, whatever the thresholds) and returns it to the
kernel on free, so every step the kernel zero-fills all those pages again: a large share of the
wall time spent in page faults (the measurements:
docs/measurements/2026-11-22-xeon-train-step.md). One arena, no `mmap`,
and no trimming make glibc keep the freed block for the next step.

This must run before other threads allocate (first thing in an entry point): glibc fixes the
number of arenas when a second thread first allocates. The same settings for a program that
calls `train.train_and_evaluate` itself, from the shell:

    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=-1

The cost: the process keeps its peak heap until it exits (the buffers are needed every step).
"""

import ctypes
import sys

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
  """One malloc arena, no mmap, no trimming. True where applied (Linux with glibc); elsewhere
  (macOS, musl) nothing is changed and it returns False."""
  if not sys.platform.startswith('linux'):
    return False
  libc = ctypes.CDLL(None)
  if not hasattr(libc, 'gnu_get_libc_version') or not hasattr(libc, 'mallopt'):
    return False  # not glibc: its mallopt (if any) has other parameters
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim
  return all(libc.mallopt(param, value) == 1 for param, value in settings)
