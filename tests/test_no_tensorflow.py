"""The step-timing path runs where TensorFlow is not installed (the lent GPU machines have JAX,
flax and optax, but neither TensorFlow nor tensorflow-datasets).

Each test starts the venv's python with a `-c` prelude that, before anything else is imported,
wraps every meta-path finder so that `tensorflow` and `tensorflow_datasets` are found by none,
as where they are not installed: importing either raises ModuleNotFoundError (an ImportError),
and `importlib.util.find_spec` answers None, which libraries that use TensorFlow only when it is
there (etils.epath, under JAX's compilation cache) rely on. Any import of either on the path
fails the subprocess."""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCK = '''
import importlib.abc, importlib.util, sys
_HIDDEN = ('tensorflow', 'tensorflow_datasets')
class _Blind(importlib.abc.MetaPathFinder):
  # Another finder, blind to the hidden packages: find_spec answers None, as for a package that
  # is not installed, so `import tensorflow` raises ModuleNotFoundError (an ImportError).
  def __init__(self, finder):
    self._finder = finder
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in _HIDDEN:
      return None
    find = getattr(self._finder, 'find_spec', None)
    return find(name, path, target) if find else None
  def invalidate_caches(self):
    getattr(self._finder, 'invalidate_caches', lambda: None)()
  def __getattr__(self, attribute):
    return getattr(self._finder, attribute)
sys.meta_path[:] = [_Blind(f) for f in sys.meta_path]
for _name in [m for m in sys.modules if m.split('.')[0] in _HIDDEN]:
  del sys.modules[_name]
try:
  import tensorflow  # noqa: F401
except ImportError:
  pass
else:
  raise SystemExit('tensorflow was not hidden')
assert importlib.util.find_spec('tensorflow_datasets') is None
'''

STEP = BLOCK + '''
import json, math
import jax
jax.config.update('jax_num_cpu_devices', 2)
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies  # noqa: F401
# Every core module but the training loop (which reads the data through data/pipeline.py), the
# data layer's spec and refusals (the config check and the commands use them), the commands' runner.
from alexnet_jax.core import augment, checkpointing, config, kernels, metrics  # noqa: F401
from alexnet_jax.core import model, optimizer, schedules, steps  # noqa: F401
from alexnet_jax.data import refusals, spec  # noqa: F401
from alexnet_jax.runtime import command  # noqa: F401
from alexnet_jax.perf import bench  # noqa: F401
from alexnet_jax.program import measure
from alexnet_jax.pods import plan  # noqa: F401
from configs import tiny
config = measure.strategy_config(tiny.get_config(), 'towers', 2)  # bench's run of tiny
run = run_lib.build(config, jax.devices()[:2])
state, batch = run.init_state(), run.synthetic_batch(config.seed)
compiled, _ = measure.compile_train_step(run, state, batch)
state, metrics = compiled(state, batch)
print(json.dumps({'loss': float(metrics['loss']), 'step': int(state.step),
                  'devices': len(run.devices), 'parallelism': config.parallelism,
                  'loaded': sorted(m for m in sys.modules
                                   if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets'))}))
'''

BENCH = BLOCK + '''
import runpy
sys.argv = ['alexnet_jax.bench'] + sys.argv[1:]
runpy.run_module('alexnet_jax.bench', run_name='__main__', alter_sys=True)
'''


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # the subprocess asks for its own devices
  return subprocess.run([sys.executable, '-c', code, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def test_a_train_step_builds_compiles_and_runs_without_tensorflow():
  done = _python(STEP)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result['loaded'] == []
  assert result['devices'] == 2 and result['parallelism'] == 'towers'
  assert result['step'] == 1
  # The synthetic batch's pixels (std 50) are not the normalised inputs the net trains on, so
  # the loss is only required to be a loss: finite and positive.
  assert math.isfinite(result['loss']) and result['loss'] > 0


def test_the_bench_command_runs_without_tensorflow(tmp_path):
  out = tmp_path / 'bench'
  done = _python(BENCH, '--config=configs/tiny.py', '--strategies=towers', '--devices=2',
                 '--steps=1', '--warmup=0', '--matmul_size=128', f'--out={out}')
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((out / 'bench.json').read_text())
  assert list(result['strategies']) == ['towers'] and result['skipped'] == {}
  entry = result['strategies']['towers']
  assert entry['devices'] == 2 and entry['batch_size'] == 32 and entry['steps'] == 1
  assert entry['images_per_second'] == entry['batch_size'] / entry['step_seconds']
  assert entry['model_flop_rate'] == entry['images_per_second'] * entry['train_flops_per_image']
  assert math.isfinite(entry['final_loss'])
