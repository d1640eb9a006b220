"""The generated `synthetic_shapes` dataset, checked from the outside: files on disk, PIL, numpy."""

import collections
import importlib
import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from alexnet_jax.data import shapes_dataset

TINY = 'synthetic_shapes/tiny'
TINY_SIDES = (40, 80)
NUM_CLASSES = 10


def _build(data_dir) -> tfds.core.DatasetBuilder:
  builder = tfds.builder(TINY, data_dir=os.fspath(data_dir))
  builder.download_and_prepare()
  return builder


def _examples(builder_dir: str, split: str) -> list[tuple[bytes, int]]:
  """(JPEG bytes, label) in file order, read by a fresh builder that knows only the directory."""
  reader = tfds.builder_from_directory(builder_dir)
  ds = reader.as_dataset(split=split, shuffle_files=False,
                         decoders={'image': tfds.decode.SkipDecoding()})
  return [(ex['image'], int(ex['label'])) for ex in tfds.as_numpy(ds)]


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory) -> str:
  return _build(tmp_path_factory.mktemp('tfds')).data_dir


@pytest.fixture(scope='module')
def train_examples(tiny_dir):
  return _examples(tiny_dir, 'train')


@pytest.fixture(scope='module')
def decoded_train(train_examples):
  return [(np.asarray(Image.open(io.BytesIO(b))), label) for b, label in train_examples]


def test_is_a_tfds_dataset_on_disk_with_configured_splits(tiny_dir):
  assert os.path.isfile(os.path.join(tiny_dir, 'dataset_info.json'))
  reader = tfds.builder_from_directory(tiny_dir)
  assert reader.info.splits['train'].num_examples == 320
  assert reader.info.splits['validation'].num_examples == 80
  assert reader.info.features['label'].num_classes == NUM_CLASSES
  assert reader.info.features['label'].names == list(shapes_dataset.CLASS_NAMES)
  assert len(_examples(tiny_dir, 'validation')) == 80


def test_images_are_rgb_jpegs_of_varied_sizes(train_examples, decoded_train):
  assert all(b[:2] == b'\xff\xd8' for b, _ in train_examples)
  shapes = collections.Counter(image.shape for image, _ in decoded_train)
  assert len(shapes) >= 50  # many distinct (h, w), portrait and landscape
  assert any(h > w for h, w, _ in shapes) and any(w > h for h, w, _ in shapes)
  for h, w, c in shapes:
    assert c == 3
    assert TINY_SIDES[0] <= h <= TINY_SIDES[1] and TINY_SIDES[0] <= w <= TINY_SIDES[1]


def test_labels_cover_every_class_evenly(tiny_dir, train_examples):
  assert collections.Counter(l for _, l in train_examples) == {c: 32 for c in range(NUM_CLASSES)}
  val = collections.Counter(l for _, l in _examples(tiny_dir, 'validation'))
  assert val == {c: 8 for c in range(NUM_CLASSES)}


def test_generation_is_deterministic(tmp_path, tiny_dir, train_examples):
  again = _build(tmp_path)
  other = _examples(again.data_dir, 'train')
  assert [b for b, _ in other[:8]] == [b for b, _ in train_examples[:8]]
  assert [l for _, l in other] == [l for _, l in train_examples]
  with open(os.path.join(tiny_dir, 'synthetic_shapes-validation.tfrecord-00000-of-00001'),
            'rb') as f1, open(os.path.join(
                again.data_dir, 'synthetic_shapes-validation.tfrecord-00000-of-00001'), 'rb') as f2:
    assert f1.read() == f2.read()


def test_another_seed_gives_other_images(tmp_path, train_examples):
  config = shapes_dataset.SyntheticShapesConfig(
      name='tiny_seed1', num_classes=10, train_examples=20, validation_examples=10,
      min_side=40, max_side=80, seed=1)
  builder = tfds.builder('synthetic_shapes', config=config, data_dir=os.fspath(tmp_path))
  builder.download_and_prepare()
  ours = {b for b, _ in train_examples}
  assert not ours & {b for b, _ in _examples(builder.data_dir, 'train')}


def test_second_prepare_reuses_files(tiny_dir):
  data_root = os.path.dirname(os.path.dirname(os.path.dirname(tiny_dir)))
  before = {f: os.stat(os.path.join(tiny_dir, f)).st_mtime_ns for f in os.listdir(tiny_dir)}
  builder = tfds.builder(TINY, data_dir=data_root)
  assert builder.data_dir == tiny_dir and builder.is_prepared()
  builder.download_and_prepare()
  after = {f: os.stat(os.path.join(tiny_dir, f)).st_mtime_ns for f in os.listdir(tiny_dir)}
  assert after == before
  assert any('tfrecord' in f for f in before)


def test_reimport_does_not_register_twice(tiny_dir):
  importlib.reload(shapes_dataset)  # would raise "already registered" without the guard
  data_root = os.path.dirname(os.path.dirname(os.path.dirname(tiny_dir)))
  assert tfds.builder(TINY, data_dir=data_root).is_prepared()


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y) -> float:
  centroids = np.stack([train_x[train_y == c].mean(0) for c in range(NUM_CLASSES)])
  pred = np.argmin(((test_x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
  return float((pred == test_y).mean())


def test_class_is_not_readable_from_colour(tiny_dir, decoded_train):
  val = [(np.asarray(Image.open(io.BytesIO(b))), l) for b, l in _examples(tiny_dir, 'validation')]
  def features(data):
    mean = np.stack([img.reshape(-1, 3).mean(0) for img, _ in data])
    centre = np.stack([img[img.shape[0] // 2, img.shape[1] // 2].astype(float) for img, _ in data])
    return mean, centre, np.array([l for _, l in data])
  train_mean, train_centre, train_y = features(decoded_train)
  val_mean, val_centre, val_y = features(val)
  # Chance is 0.1; 80 validation images, so allow noise. A colour-coded dataset would score ~1.
  assert _nearest_centroid_accuracy(train_mean, train_y, val_mean, val_y) < 0.3
  assert _nearest_centroid_accuracy(train_centre, train_y, val_centre, val_y) < 0.3
  # Every class shows many different colours.
  for c in range(NUM_CLASSES):
    assert train_centre[train_y == c].std(0).min() > 30


def test_stripes_have_the_orientation_of_their_name(decoded_train):
  names = shapes_dataset.CLASS_NAMES
  for image, label in decoded_train:
    if names[label] not in ('horizontal_stripes', 'vertical_stripes'):
      continue
    grey = image.astype(float).mean(-1)
    change_down = np.abs(np.diff(grey, axis=0)).mean()  # large across horizontal stripes
    change_across = np.abs(np.diff(grey, axis=1)).mean()
    if names[label] == 'horizontal_stripes':
      assert change_down > change_across
    else:
      assert change_across > change_down
