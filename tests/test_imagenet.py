"""ImageNet as the paper fed it, on a miniature ILSVRC-2012: real tars in the real layout, tfds's
own imagenet2012 preparation, then `python -m alexnet_jax.main --config=configs/paper.py`."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from alexnet_jax.core import checkpointing
from alexnet_jax.data import image_check
from alexnet_jax.data import refusals
from alexnet_jax.data import stats as stats_lib
from conftest import prepared_input
from configs import paper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNSETS = ('n01440764', 'n01443537', 'n01484850', 'n01491361')  # the first four ILSVRC classes
IMAGES_PER_CLASS = 4
NUM_VAL = 10


def _jpeg(seed: int, height: int, width: int) -> bytes:
  """A photograph-like JPEG: smooth colour gradients, a bright blob and noise."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  image = (rng.uniform(0, 255, 3) * (1 - x[..., None]) + rng.uniform(0, 255, 3) * y[..., None]) / 2
  cy, cx = rng.uniform(0.2, 0.8, 2)
  image += 120 * np.exp(-((y - cy)**2 + (x - cx)**2) / 0.02)[..., None]
  image += rng.normal(0, 8, image.shape)
  buffer = io.BytesIO()
  Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, 'JPEG', quality=90)
  return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _write_train_tar(path, members: dict) -> None:
  """ILSVRC2012_img_train.tar: one tar per class, `members` = {tar member name: {jpeg name:
  bytes}}."""
  with tarfile.open(path, 'w') as outer:
    for name, images in members.items():
      buffer = io.BytesIO()
      with tarfile.open(fileobj=buffer, mode='w') as inner:
        for image_name, data in images.items():
          _add(inner, image_name, data)
      _add(outer, name, buffer.getvalue())


def _write_val_tar(path, names, replace=None) -> None:
  """ILSVRC2012_img_val.tar: a JPEG per name, or replace[name] where given."""
  with tarfile.open(path, 'w') as tar:
    for i, name in enumerate(names):
      _add(tar, name, (replace or {}).get(name) or _jpeg(1000 + i, 96 + 8 * (i % 3),
                                                         128 - 8 * (i % 4)))


def _train_members():
  return {f'{synset}.tar': {f'{synset}_{10026 + i}.JPEG': _jpeg(100 * c + i, 90 + 10 * i, 120)
                            for i in range(IMAGES_PER_CLASS)}
          for c, synset in enumerate(SYNSETS)}


def _val_names(numbers):
  return [f'ILSVRC2012_val_{n:08d}.JPEG' for n in numbers]


@pytest.fixture(scope='module')
def manual_dir(tmp_path_factory):
  """A miniature of the two archives image-net.org serves, in their layout."""
  directory = tmp_path_factory.mktemp('manual')
  _write_train_tar(directory / 'ILSVRC2012_img_train.tar', _train_members())
  _write_val_tar(directory / 'ILSVRC2012_img_val.tar', _val_names(range(1, NUM_VAL + 1)))
  return directory


def _run_main(workdir, data_dir, manual_dir, *overrides):
  cmd = [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/paper.py',
         f'--workdir={workdir}', f'--config.data_dir={data_dir}',
         f'--config.manual_dir={manual_dir}',
         # A tiny network (1000 classes: tfds's imagenet2012 has them fixed) on small images.
         '--config.model.conv_features=(8, 16, 16, 16, 8)', '--config.model.fc_features=(32, 32)',
         '--config.resize_size=72', '--config.image_size=64', '--config.batch_size=8',
         '--config.eval_batch_size=4', '--config.num_train_steps=3', '--config.log_every_steps=1',
         '--config.eval_every_steps=3', '--config.checkpoint_every_steps=3', *overrides]
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_paper_config_trains_on_a_miniature_imagenet_prepared_by_tfds(tmp_path, manual_dir):
  data_dir, workdir = tmp_path / 'tfds', tmp_path / 'work'
  proc = _run_main(workdir, data_dir, manual_dir, '--config.eval_crops=ten')
  assert proc.returncode == 0, proc.stderr[-4000:]

  # tfds's imagenet2012, written by tfds from the tars: every image, labels by synset id, and
  # the validation labels from tfds's list of 50,000 (image 1 is n01751748, class 65).
  builder = tfds.builder('imagenet2012', data_dir=str(data_dir))
  assert builder.is_prepared()
  assert builder.info.splits['train'].num_examples == len(SYNSETS) * IMAGES_PER_CLASS
  assert builder.info.splits['validation'].num_examples == NUM_VAL
  train = list(tfds.as_numpy(builder.as_dataset(split='train')))
  names = builder.info.features['label'].names
  assert {names[ex['label']] for ex in train} == set(SYNSETS)
  assert all(ex['file_name'].decode().startswith(names[ex['label']]) for ex in train)
  val = {ex['file_name'].decode(): ex['label']
         for ex in tfds.as_numpy(builder.as_dataset(split='validation'))}
  assert names[val['ILSVRC2012_val_00000001.JPEG']] == 'n01751748'

  # The training-set statistics, computed once and cached beside the dataset.
  stats_path = os.path.join(builder.data_dir, 'alexnet_jax_stats-train-r72-nall.npz')
  stats = stats_lib.DatasetStats.load(stats_path)
  assert stats.num_images == 16 and stats.mean_image.shape == (72, 72, 3)
  # The stats command finds them (no second pass) and prints them.
  mtime = os.stat(stats_path).st_mtime_ns
  command = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.dataset_stats', '--config=configs/paper.py',
       f'--config.data_dir={data_dir}', '--config.resize_size=72', '--config.image_size=64'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert command.returncode == 0, command.stderr[-3000:]
  assert stats_path in command.stdout and 'images: 16' in command.stdout
  assert os.stat(stats_path).st_mtime_ns == mtime

  config = json.load(open(workdir / 'config.json'))
  assert config['mean_subtraction'] == 'image' and config['pca_lighting_std'] == 0.1
  assert config['pca_eigen'] == 'dataset' and config['train_crop'] == 'random_crop'
  records = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  train_records = [r for r in records if 'loss' in r]
  assert [r['step'] for r in train_records] == [1, 2, 3]
  assert 'images_per_second' not in train_records[0]  # step 1's time is mostly compiling
  losses = [r['loss'] for r in train_records]
  assert np.all(np.isfinite(losses))
  assert abs(losses[0] - np.log(1000)) < 1.0  # 1000 classes, near-uniform at the start
  evals = [r for r in records if 'val_top1' in r]
  # Ten patches per image, 10 images in batches of 4: every image counted once.
  assert len(evals) == 1 and evals[0]['val_examples'] == NUM_VAL
  assert 0.0 <= evals[0]['val_top1'] <= evals[0]['val_top5'] <= 1.0


def _prepare(tmp_path, manual):
  config = paper.get_config()
  config.data_dir = os.fspath(tmp_path / 'tfds')
  config.manual_dir = os.fspath(manual)
  with pytest.raises(refusals.DatasetNotReadyError) as info:
    prepared_input(config).builder
  data_dir = tmp_path / 'tfds'
  assert not data_dir.exists() or not any(data_dir.rglob('*'))  # refused before writing
  return str(info.value)


def test_misnamed_class_archives_are_refused_with_the_expected_layout(tmp_path, manual_dir):
  manual = tmp_path / 'manual'
  manual.mkdir()
  members = _train_members()
  members['cats.tar'] = members.pop('n01440764.tar')
  _write_train_tar(manual / 'ILSVRC2012_img_train.tar', members)
  (manual / 'ILSVRC2012_img_val.tar').write_bytes(
      (manual_dir / 'ILSVRC2012_img_val.tar').read_bytes())
  message = _prepare(tmp_path, manual)
  assert 'cats.tar' in message and 'n01440764.tar' in message
  assert os.fspath(manual / 'ILSVRC2012_img_train.tar') in message


@pytest.mark.parametrize('names,words', [
    (_val_names([1, 2, 4, 5]), ['00000003', 'mislabel']),  # tfds labels by position
    (['val/' + n for n in _val_names([1, 2])], ['val/ILSVRC2012_val_00000001.JPEG',
                                                 'ILSVRC2012_val_00000001.JPEG']),
])
def test_validation_archive_that_tfds_would_mislabel_is_refused(tmp_path, manual_dir, names,
                                                                words):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'ILSVRC2012_img_train.tar').write_bytes(
      (manual_dir / 'ILSVRC2012_img_train.tar').read_bytes())
  _write_val_tar(manual / 'ILSVRC2012_img_val.tar', names)
  message = _prepare(tmp_path, manual)
  for word in words:
    assert word in message
  assert os.fspath(manual / 'ILSVRC2012_img_val.tar') in message


def test_a_file_that_is_not_a_tar_is_refused(tmp_path, manual_dir):
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'ILSVRC2012_img_train.tar').write_bytes(b'<html>Please log in</html>' * 40)
  (manual / 'ILSVRC2012_img_val.tar').write_bytes(
      (manual_dir / 'ILSVRC2012_img_val.tar').read_bytes())
  message = _prepare(tmp_path, manual)
  assert 'not a readable tar' in message and 'ILSVRC2012_img_train.tar' in message


# ---------------------------------------------------------------------------------------------
# Damaged JPEGs in the archives: tfds prepares them without complaint.

TRUNCATED = 'n01443537_10027.JPEG'  # a training JPEG cut to a third of its bytes
UNDECODABLE = 'n01484850_10028.JPEG'  # a training "JPEG" that is a web page
UNDECODABLE_VAL = 'ILSVRC2012_val_00000003.JPEG'  # a validation "JPEG" that is a PNG


def _manual_with(directory, train_changes, val_replace=None):
  """The miniature archives with training JPEGs changed: train_changes = {name: fn(bytes)}."""
  directory.mkdir()
  members = _train_members()
  for images in members.values():
    for name in images.keys() & train_changes.keys():
      images[name] = train_changes[name](images[name])
  _write_train_tar(directory / 'ILSVRC2012_img_train.tar', members)
  _write_val_tar(directory / 'ILSVRC2012_img_val.tar', _val_names(range(1, NUM_VAL + 1)),
                 val_replace)
  return directory


def _png() -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.full((100, 120, 3), 90, np.uint8)).save(buffer, 'PNG')
  return buffer.getvalue()


@pytest.fixture(scope='module')
def truncated_run(tmp_path_factory):
  """`main` trained on a miniature ImageNet whose one training JPEG is cut to a third of its
  bytes: (its CompletedProcess, workdir, data dir)."""
  root = tmp_path_factory.mktemp('truncated')
  manual = _manual_with(root / 'manual', {TRUNCATED: lambda jpeg: jpeg[:len(jpeg) // 3]})
  return _run_main(root / 'work', root / 'tfds', manual), root / 'work', root / 'tfds'


def test_a_truncated_jpeg_is_trained_on_as_far_as_it_goes_and_counted(truncated_run):
  proc, workdir, data_dir = truncated_run
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert '1 of the 16 images of imagenet2012 train are truncated JPEGs' in proc.stderr
  assert TRUNCATED in proc.stderr
  builder = tfds.builder('imagenet2012', data_dir=str(data_dir))
  saved = json.load(open(image_check.image_check_path(builder, 'train')))
  assert [name for name, _ in saved['truncated']] == [TRUNCATED] and not saved['undecodable']
  assert 0 < saved['truncated'][0][1] < 0.9 and saved['num_images'] == 16
  # Every image, the truncated one included, went into the statistics, 3 steps of 8 (more than
  # an epoch) and the evaluation.
  stats = stats_lib.DatasetStats.load(
      os.path.join(builder.data_dir, 'alexnet_jax_stats-train-r72-nall.npz'))
  assert stats.num_images == 16 and np.isfinite(stats.mean_image).all()
  records = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['step'] for r in records if 'loss' in r] == [1, 2, 3]
  assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)
  assert [r['val_examples'] for r in records if 'val_top1' in r] == [NUM_VAL]


def _files(directory):
  """{path: (size, modification time)} of every file under `directory`."""
  stat = lambda path: (os.stat(path).st_size, os.stat(path).st_mtime_ns)
  return {os.path.relpath(os.path.join(d, f), directory): stat(os.path.join(d, f))
          for d, _, files in os.walk(directory) for f in files}


def test_undecodable_jpegs_are_named_before_training_and_checkpoints_are_kept(tmp_path,
                                                                              truncated_run):
  manual = _manual_with(tmp_path / 'manual',
                        {UNDECODABLE: lambda _: b'<html>Please log in</html>' * 40},
                        {UNDECODABLE_VAL: _png()})
  data_dir, fresh = tmp_path / 'tfds', tmp_path / 'work'
  # A new run: one `error:` line names the files, before the first checkpoint.
  proc = _run_main(fresh, data_dir, manual)
  assert proc.returncode == 2, proc.stderr[-4000:]
  assert 'Traceback' not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1
  assert errors[0].startswith('error: 2 images of imagenet2012 cannot be decoded as JPEG')
  assert UNDECODABLE in errors[0] and UNDECODABLE_VAL in errors[0]
  builder = tfds.builder('imagenet2012', data_dir=str(data_dir))
  for words in [refusals.IMAGENET_MD5['ILSVRC2012_img_train.tar'], os.fspath(manual),
                f'rm -r {builder.data_dir}']:
    assert words in proc.stderr
  assert checkpointing.saved_steps(fresh) == [] and _files(fresh / 'checkpoints') == {}
  # A run with checkpoints, pointed at the damaged dataset: refused the same way (from the saved
  # check), its checkpoints untouched.
  _, workdir, _ = truncated_run
  assert checkpointing.saved_steps(workdir) == [3]
  before = _files(workdir / 'checkpoints')
  proc = _run_main(workdir, data_dir, manual)
  assert proc.returncode == 2, proc.stderr[-4000:]
  assert 'Traceback' not in proc.stderr and UNDECODABLE in proc.stderr
  assert _files(workdir / 'checkpoints') == before


def test_training_from_the_resized_imagenet_keeps_labels_and_file_names(tmp_path, manual_dir):
  """--config.resized=jpeg: tfds prepares imagenet2012 from the tars, the squares are written
  from it once, and training reads them; later runs need only the squares."""
  data_dir = tmp_path / 'tfds'
  proc = _run_main(tmp_path / 'work', data_dir, manual_dir, '--config.resized=jpeg')
  assert proc.returncode == 0, proc.stderr[-4000:]
  source = tfds.builder('imagenet2012', data_dir=str(data_dir))
  resized = tfds.builder(f'resized_squares/imagenet2012-{source.info.version}-r72-jpeg90',
                         data_dir=str(data_dir))
  assert resized.is_prepared()
  for split, count in (('train', len(SYNSETS) * IMAGES_PER_CLASS), ('validation', NUM_VAL)):
    originals = {ex['file_name']: ex for ex in tfds.as_numpy(source.as_dataset(split=split))}
    squares = list(tfds.as_numpy(resized.as_dataset(split=split)))
    assert len(squares) == len(originals) == count
    for ex in squares:
      original = originals[ex['file_name']]  # every file name kept, with its label
      assert ex['label'] == original['label'] and ex['image'].shape == (72, 72, 3)
      # Within JPEG's rounding of a PIL resize of the original (shorter side 72, centre).
      image = Image.fromarray(original['image'])
      w, h = image.size
      big = np.asarray(image.resize((round(w * 72 / min(w, h)), round(h * 72 / min(w, h))),
                                    Image.BILINEAR), np.float32)
      top, left = (big.shape[0] - 72) // 2, (big.shape[1] - 72) // 2
      assert np.abs(ex['image'] - big[top:top + 72, left:left + 72]).mean() < 6
  assert resized.info.features['label'].names == source.info.features['label'].names
  stats = os.path.join(resized.data_dir, 'alexnet_jax_stats-train-r72-nall.npz')
  assert stats_lib.DatasetStats.load(stats).num_images == 16
  # The source's prepared files deleted: a new run trains from the squares alone.
  shutil.rmtree(data_dir / 'imagenet2012')
  again = _run_main(tmp_path / 'work2', data_dir, tmp_path / 'no_tars_here', '--config.resized=jpeg')
  assert again.returncode == 0, again.stderr[-4000:]
  records = [json.loads(line) for line in open(tmp_path / 'work2' / 'metrics.jsonl')]
  assert [r['val_examples'] for r in records if 'val_top1' in r] == [NUM_VAL]
