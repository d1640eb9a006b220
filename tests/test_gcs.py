"""Workdirs on gs://, against a real GCS API: a GCS emulator on 127.0.0.1 (tests/gcs_emulator.py),
started and stopped here. Without its package, gcp-storage-emulator (requirements.txt), the tests
that need it fail, saying so: none is skipped.

What reaches gs:// here is what reaches it on a pod: orbax (tensorstore for the arrays, etils.epath
for the rest) and alexnet_jax/runtime/paths.py (etils.epath). The programs that use the emulator
run in subprocesses with its environment (etils.epath picks its gs:// backend once per process).
"""

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

import gcs_emulator  # tests/ is on sys.path under pytest
from alexnet_jax.core import checkpointing
from alexnet_jax.runtime import paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 20 steps; a checkpoint every 5, an evaluation every 10.
COMMAND = ('--config.num_train_steps=20', '--config.checkpoint_every_steps=5',
           '--config.eval_every_steps=10', '--config.log_every_steps=5')


@pytest.fixture(scope='module')
def emulator():
  if not gcs_emulator.AVAILABLE:
    pytest.fail(gcs_emulator.MISSING)
  server = gcs_emulator.Emulator()
  yield server
  server.stop()


def _python(emulator, code: str, timeout: int = 300) -> subprocess.CompletedProcess:
  """`code` in a Python subprocess pointed at the emulator."""
  return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=ROOT,
                        env=dict(os.environ, **emulator.env()), capture_output=True, text=True,
                        timeout=timeout)


PATHS_EXERCISE = '''
  from alexnet_jax.runtime import paths
  root = ROOT
  d = paths.join(root, 'a', 'b')
  paths.check_writable(d)
  assert paths.isdir(d) or paths.is_remote(d)  # an empty prefix is no directory on GCS
  paths.write_text(paths.join(d, 'x.txt'), 'one')
  paths.write_text(paths.join(d, 'x.txt'), 'two')  # replaced whole
  assert paths.read_text(paths.join(d, 'x.txt')) == 'two'
  assert paths.exists(paths.join(d, 'x.txt')) and not paths.exists(paths.join(d, 'y.txt'))
  assert paths.isdir(d) and paths.listdir(paths.join(root, 'a')) == ['b']
  assert sorted(paths.listdir(d)) == ['x.txt'], paths.listdir(d)  # the write probe is gone
  assert paths.dirname(paths.join(d, 'x.txt')) == d and paths.basename(d + '/') == 'b'
  assert paths.isfile(paths.join(d, 'x.txt')) and not paths.isfile(d)
  paths.write_bytes(paths.join(d, 'y.bin'), bytes(range(256)))
  assert paths.read_bytes(paths.join(d, 'y.bin')) == bytes(range(256))
  with paths.open_for_reading(paths.join(d, 'y.bin')) as f:  # seekable: tarfile seeks
    f.seek(200)
    assert f.read(3) == bytes([200, 201, 202])
  paths.replace_text(paths.join(d, 'y.bin'), 'whole')
  assert paths.read_text(paths.join(d, 'y.bin')) == 'whole'
  assert sorted(paths.listdir(d)) == ['x.txt', 'y.bin'], paths.listdir(d)  # no temporary left
  paths.remove(paths.join(d, 'y.bin'))
  paths.remove(paths.join(d, 'x.txt'))
  assert not paths.exists(paths.join(d, 'x.txt'))
  try:
    paths.remove(paths.join(d, 'x.txt'))
    raise AssertionError('removed twice')
  except FileNotFoundError:
    pass
  try:
    paths.read_text(paths.join(d, 'absent.txt'))
    raise AssertionError('read an absent file')
  except FileNotFoundError:
    pass
  print('EXERCISED')
'''


def test_paths_on_local_disk(tmp_path):
  exec(textwrap.dedent(PATHS_EXERCISE).replace('ROOT', repr(str(tmp_path))), {})  # pylint: disable=exec-used
  assert paths.absolute('rel') == os.path.abspath('rel')
  assert paths.join(str(tmp_path), 'c') == os.path.join(str(tmp_path), 'c')


def test_uri_helpers_without_a_server():
  assert paths.is_remote('gs://b/run') and not paths.is_remote('/tmp/run')
  assert paths.absolute('gs://b/run/') == 'gs://b/run'
  assert paths.join('gs://b/run/', 'checkpoints', '5') == 'gs://b/run/checkpoints/5'
  assert paths.dirname('gs://b/run/checkpoints') == 'gs://b/run'
  with pytest.raises(ValueError, match='cannot append'):
    paths.append_text('gs://b/run/metrics.jsonl', 'x')


def test_paths_on_the_emulator(emulator):
  root = f'gs://{emulator.bucket}/paths'
  proc = _python(emulator, PATHS_EXERCISE.replace('ROOT', repr(root)))
  assert 'EXERCISED' in proc.stdout, proc.stderr[-3000:]
  assert emulator.objects('paths/') == []  # everything written was removed, through the API


def test_a_data_dir_and_an_out_on_the_emulator(emulator, tmp_path):
  """What this project writes beside a gs:// dataset (the training-set statistics), reads from a
  gs:// manual_dir (the ImageNet tars' headers) and writes to a gs:// --out (a report), checked
  through the emulator's API with NumPy, tarfile and json. tfds's own records on gs:// go
  through TensorFlow's GCS file system, which cannot be pointed at an emulator (docs/gcs.md)."""
  tar = tmp_path / 'ILSVRC2012_img_val.tar'
  with tarfile.open(tar, 'w') as t:
    for name, size in (('a.JPEG', 3), ('b.JPEG', 70000)):
      member = tarfile.TarInfo(name)
      member.size = size
      t.addfile(member, fileobj=io.BytesIO(b'x' * size))
  rng = np.random.default_rng(0)
  arrays = {'mean_image': rng.random((4, 4, 3), np.float32), 'mean_rgb': rng.random(3, np.float32),
            'eigval': rng.random(3, np.float32), 'eigvec': rng.random((3, 3), np.float32)}
  np.savez(tmp_path / 'arrays.npz', **arrays)
  root = f'gs://{emulator.bucket}/data'
  proc = _python(emulator, f"""
      import json
      import numpy as np
      from alexnet_jax.data import prepare, stats
      from alexnet_jax.report.write import write_report
      from alexnet_jax.runtime import paths
      arrays = dict(np.load({str(tmp_path / 'arrays.npz')!r}))
      path = stats.cache_path({root + '/tfds/synthetic_shapes/tiny/1.0.0'!r}, 'train[:10]', 4, 10)
      stats.DatasetStats(num_images=10, **arrays).save(path)
      back = stats.DatasetStats.load(path)
      assert all(np.array_equal(getattr(back, k), v) for k, v in arrays.items())
      paths.copy_file({str(tar)!r}, {root + '/manual/ILSVRC2012_img_val.tar'!r})
      print('TAR', json.dumps(prepare._tar_names({root + '/manual/ILSVRC2012_img_val.tar'!r})))
      write_report({root + '/out'!r}, 'plan', {{'x': 1}}, lambda r: f"x is {{r['x']}}\\n",
                   lambda r: b'png bytes')
      print('DONE')
  """)
  assert 'DONE' in proc.stdout, proc.stderr[-3000:]
  assert 'TAR ["a.JPEG", "b.JPEG"]' in proc.stdout
  name = 'data/tfds/synthetic_shapes/tiny/1.0.0/alexnet_jax_stats-train_-10-r4-n10.npz'
  assert emulator.objects('data/tfds/') == [name]  # one object, no temporary beside it
  with np.load(io.BytesIO(emulator.read(name))) as saved:
    assert int(saved['num_images']) == 10 and int(saved['version']) == 1
    for key, value in arrays.items():
      assert np.array_equal(saved[key], value), key
  assert json.loads(emulator.read('data/out/plan.json')) == {'x': 1}
  assert emulator.read('data/out/plan.md') == b'x is 1\n'
  assert emulator.read('data/out/plan.png') == b'png bytes'


def test_an_unwritable_bucket_is_refused_before_any_work(emulator, tmp_path, tiny_data_dir):
  """A bucket that does not exist (the emulator's 404, as GCS's): exit 2, the workdir named."""
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/tiny.py',
       '--workdir=gs://no-such-bucket/run', f'--config.data_dir={tiny_data_dir}', *COMMAND],
      cwd=ROOT, env=_main_env(emulator), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert '--workdir=gs://no-such-bucket/run cannot be written' in proc.stderr, proc.stderr[-3000:]


def _main_env(emulator) -> dict:
  env = dict(os.environ, **emulator.env())
  env.pop('XLA_FLAGS', None)  # main must find its devices by itself (conftest._run_main)
  return env


def _wait_for_object(emulator, name: str, proc, timeout: float = 300) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if name in emulator.objects(name):
      return
    assert proc.poll() is None, f'the run ended (rc {proc.returncode}) before {name} existed'
    time.sleep(0.05)
  raise AssertionError(f'no {name} in {timeout} s')


def test_a_run_on_gcs_killed_and_resumed_equals_a_local_run_bit_for_bit(
    emulator, tmp_path, tiny_data_dir, run_main):
  reference = str(tmp_path / 'local')
  proc = run_main(reference, *COMMAND, data_dir=tiny_data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]

  workdir = f'gs://{emulator.bucket}/run'
  cmd = [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/tiny.py',
         f'--workdir={workdir}', f'--config.data_dir={tiny_data_dir}', *COMMAND]
  # 1. kill -9 as soon as checkpoint 5 is committed (the run goes on to later steps).
  log = tmp_path / 'first.log'
  with open(log, 'w') as f:
    first = subprocess.Popen(cmd, cwd=ROOT, env=_main_env(emulator), stdout=f,
                             stderr=subprocess.STDOUT)
  _wait_for_object(emulator, 'run/checkpoints/5/commit_success.txt', first)
  first.kill()
  first.wait(timeout=60)
  objects = emulator.objects('run/')
  assert 'run/config.json' in objects
  assert 'run/checkpoints/5/state/manifest.ocdbt' in objects, objects

  # 2. The same command resumes from the latest committed checkpoint and finishes.
  second = subprocess.run(cmd, cwd=ROOT, env=_main_env(emulator), capture_output=True,
                          text=True, timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  assert f'Resumed from {workdir}/checkpoints at step' in second.stderr, second.stderr[-3000:]
  assert 'runs are not locked' in second.stderr

  # Every file a local run writes is there, as objects the emulator lists.
  objects = emulator.objects('run/')
  for name in ('config.json', 'metrics.jsonl', 'checkpoints/20/commit_success.txt',
               'checkpoints/20/state/manifest.ocdbt', 'checkpoints/20/meta/metadata'):
    assert f'run/{name}' in objects, (name, objects)
  assert any(n.startswith('run/events.out.tfevents.') for n in objects), objects
  assert not any(n.startswith('run/.write_probe') for n in objects), objects
  local_steps = checkpointing.saved_steps(reference)
  gcs_steps = sorted({int(n.split('/')[2]) for n in objects
                      if n.startswith('run/checkpoints/') and n.endswith('/commit_success.txt')
                      and n.split('/')[2].isdigit()})
  assert gcs_steps == local_steps, (gcs_steps, local_steps)

  # The parameters, bit for bit; the final evaluation; the logged means.
  out = tmp_path / 'gcs_params.npz'
  proc = _python(emulator, f'''
      import numpy as np
      from alexnet_jax.core import checkpointing
      assert checkpointing.saved_steps({workdir!r}) == {local_steps!r}
      config, params = checkpointing.restore_params({workdir!r})
      flat = {{f'{{l}}/{{k}}': v for l, p in params.items() for k, v in p.items()}}
      np.savez({str(out)!r}, **flat)
  ''')
  assert proc.returncode == 0, proc.stderr[-3000:]
  _, ref_params = checkpointing.restore_params(reference)
  saved = np.load(out)
  ref_flat = {f'{l}/{k}': np.asarray(v) for l, p in ref_params.items() for k, v in p.items()}
  assert sorted(saved.files) == sorted(ref_flat)
  for name, value in ref_flat.items():
    assert saved[name].dtype == value.dtype and saved[name].tobytes() == value.tobytes(), name
  gcs_meta = json.loads(emulator.read('run/checkpoints/20/meta/metadata'))
  with open(os.path.join(reference, 'checkpoints', '20', 'meta', 'metadata')) as f:
    ref_meta = json.load(f)
  assert gcs_meta['metrics'] == ref_meta['metrics'] and gcs_meta['schedule'] == ref_meta['schedule']
  last = lambda lines: {r['step']: r for r in lines}  # the later line for a step counts
  gcs_lines = [json.loads(l) for l in emulator.read('run/metrics.jsonl').decode().splitlines()]
  with open(os.path.join(reference, 'metrics.jsonl')) as f:
    ref_lines = [json.loads(l) for l in f]
  strip = lambda r: {k: v for k, v in r.items() if k != 'images_per_second'}
  gcs_last, ref_last = last(gcs_lines), last(ref_lines)
  assert sorted(gcs_last) == sorted(ref_last)
  for step in (10, 20):  # evaluations (and the steps' means) the resumed run made itself
    assert strip(gcs_last[step]) == strip(ref_last[step]), step

  # 3. evaluate and figures read the run from gs:// and write their files there. evaluate takes
  # the local run and the gs:// run as two members of one ensemble: equal parameters give equal
  # probabilities, byte for byte.
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.evaluate', f'--workdir={reference}',
       f'--workdir={workdir}', f'--out={workdir}/evaluation'],
      cwd=ROOT, env=_main_env(emulator), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluation = json.loads(emulator.read('run/evaluation/evaluation.json'))
  assert [m['workdir'] for m in evaluation['members']] == [reference, workdir]
  local_probs, gcs_probs = (emulator.read(f'run/evaluation/{m["probs_file"]}')
                            for m in evaluation['members'])
  assert local_probs == gcs_probs and len(local_probs) > 128  # an .npy header and the numbers
  assert evaluation['members'][0]['top1_error'] == evaluation['members'][1]['top1_error']
  assert 'run/evaluation/evaluation.md' in emulator.objects('run/evaluation/')

  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.figures', f'--workdir={workdir}', '--num_train_images=16'],
      cwd=ROOT, env=_main_env(emulator), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'to {workdir}/figures' in proc.stdout, proc.stdout
  for name in ('conv1_kernels.png', 'predictions.png', 'neighbours.png', 'curves.png'):
    assert emulator.read(f'run/figures/{name}')[:8] == b'\x89PNG\r\n\x1a\n', name
  made = json.loads(emulator.read('run/figures/figures.json'))
  assert made['workdir'] == workdir and made['step'] == 20
  # The colour scores, by hand from the local run's conv1 (equal to the gs:// run's, above):
  # per kernel, 1 - 3 x the variance of its per-pixel grey level over its total variance.
  with open(os.path.join(reference, 'config.json')) as f:
    std_rgb = json.load(f)['std_rgb']
  kernel = np.asarray(ref_params['conv1']['kernel'], np.float64) / np.asarray(std_rgb)[:, None]
  for t in range(2):
    w = kernel[t]
    grey = w.mean(axis=2, keepdims=True)
    total = ((w - w.mean(axis=(0, 1, 2), keepdims=True)) ** 2).sum(axis=(0, 1, 2))
    brightness = 3 * ((grey - grey.mean(axis=(0, 1, 2), keepdims=True)) ** 2).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(made['colour_specificity']['per_kernel'][t],
                               1 - brightness / total, atol=1e-4)

  # 4. A torn checkpoint on gs:// is refused, named, and left as it is (as on local disk).
  data = emulator.objects('run/checkpoints/20/state/ocdbt.process_0/d/')
  assert data
  for name in data:  # every data file of the latest checkpoint cut in half
    emulator.write(name, emulator.read(name)[:len(emulator.read(name)) // 2])
  before = {n: emulator.read(n) for n in emulator.objects('run/checkpoints/')}
  proc = subprocess.run(cmd[:-len(COMMAND)] + ['--config.num_train_steps=25', *COMMAND[1:]],
                        cwd=ROOT, env=_main_env(emulator), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert f'Checkpoint 20 at {workdir}/checkpoints/20 cannot be read' in proc.stderr, \
      proc.stderr[-3000:]
  assert {n: emulator.read(n) for n in emulator.objects('run/checkpoints/')} == before


def test_the_emulator_honours_generation_preconditions(emulator):
  """The harness's wrapping of the emulator (tests/gcs_emulator.py), checked with plain HTTP
  requests against what the GCS JSON API documents for preconditions: tensorstore's checkpoint
  commits rely on them, so a harness that lost them would let the resume test pass vacuously."""

  def call(method, path, data=None):
    request = urllib.request.Request(emulator.url + path, data=data, method=method)
    try:
      with urllib.request.urlopen(request, timeout=30) as r:
        return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
      return e.code, dict(e.headers), e.read()

  upload = f'/upload/storage/v1/b/{emulator.bucket}/o?uploadType=media&name=pre/x'
  status, _, body = call('POST', upload + '&ifGenerationMatch=0', b'one')
  assert status == 200
  first = int(json.loads(body)['generation'])
  assert call('POST', upload + '&ifGenerationMatch=0', b'two')[0] == 412  # exists already
  assert call('POST', upload + f'&ifGenerationMatch={first + 1}', b'two')[0] == 412
  status, _, body = call('POST', upload + f'&ifGenerationMatch={first}', b'two')
  assert status == 200 and int(json.loads(body)['generation']) != first
  second = int(json.loads(body)['generation'])
  media = f'/download/storage/v1/b/{emulator.bucket}/o/pre%2Fx?alt=media'
  status, headers, body = call('GET', media)
  assert (status, body) == (200, b'two')
  assert int({k.lower(): v for k, v in headers.items()}['x-goog-generation']) == second
  assert call('GET', media + f'&ifGenerationNotMatch={second}')[0] == 304
  assert call('GET', media + f'&ifGenerationMatch={first}')[0] == 412
  delete = f'/storage/v1/b/{emulator.bucket}/o/pre%2Fx'
  assert call('DELETE', delete + f'?ifGenerationMatch={first}')[0] == 412
  assert call('DELETE', delete + f'?ifGenerationMatch={second}')[0] in (200, 204)
  assert emulator.objects('pre/') == []

  # What the released emulator broke: an OCDBT store (orbax's checkpoint format) committed
  # twice in one process ("Malformed StorageGeneration" at the second manifest write).
  proc = _python(emulator, f'''
      import tensorstore as ts
      for i in range(3):
        kv = ts.KvStore.open({{'driver': 'ocdbt', 'base': 'gs://{emulator.bucket}/ocdbt/'}}).result()
        kv.write('k', b'v%d' % i).result()
        assert kv.read('k').result().value == b'v%d' % i
      print('COMMITTED')
  ''')
  assert 'COMMITTED' in proc.stdout, proc.stderr[-3000:]
  assert 'ocdbt/manifest.ocdbt' in emulator.objects('ocdbt/')
