"""allocator.keep_freed_memory: a large block freed by a worker thread is reused, not remapped.

Each check runs in a fresh interpreter (the setting is process-wide and must come before other
threads allocate), measuring glibc directly: where a 96 MB block lives (the brk heap or a fresh
mapping) and how many page faults touching it again costs, with and without the setting.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = r'''
import ctypes, json, resource, sys, threading
from alexnet_jax.runtime import allocator
applied = allocator.keep_freed_memory() if sys.argv[1] == 'on' else None
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_ssize_t]
SIZE = 96 << 20
rounds = []
def work():  # on a worker thread, as XLA:CPU allocates a step's buffers
  for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(SIZE)
    ctypes.memset(p, 1, SIZE)  # touch every page, as a step writes its buffers
    in_heap = p < libc.sbrk(0)  # below the program break: the brk heap, not a fresh mapping
    libc.free(p)
    rounds.append({'faults': resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                   'in_heap': bool(in_heap)})
threading.Thread(target=lambda: libc.free(libc.malloc(1024))).start()  # another thread's arena
t = threading.Thread(target=work)
t.start()
t.join()
print(json.dumps({'applied': applied, 'rounds': rounds, 'pages': SIZE // resource.getpagesize()}))
'''


def _probe(mode: str) -> dict:
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, GLIBC_TUNABLES=''))
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc only')
def test_freed_block_is_reused_without_page_faults():
  off, on = _probe('off'), _probe('on')
  assert on['applied'] is True
  # The default (the control): glibc maps every 96 MB block afresh, outside the heap, and the
  # kernel faults in (and zero-fills) every page of it again each time.
  assert not any(r['in_heap'] for r in off['rounds']), off
  assert off['rounds'][2]['faults'] > 0.5 * off['pages'], off
  # With the setting: the block comes from the heap, and once freed it is reused as it is.
  assert all(r['in_heap'] for r in on['rounds']), on
  for r in on['rounds'][1:]:
    assert r['faults'] < 0.02 * on['pages'], on
