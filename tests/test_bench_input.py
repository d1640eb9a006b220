"""The input benchmark: its ImageNet-like JPEGs against ILSVRC-2012's sizes, and its command line
end to end (fields, the ratio's arithmetic, one core). Speeds are measured, never asserted: which
of decode and decode + resize is faster depends on the images and the machine."""

import json
import math
import os
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATES = ('decode', 'decode_resize', 'augment', 'pipeline', 'augment_device',
         'pipeline_device_augment', 'device_half_xla_cpu')


def _check_imagenet_like(images):
  """ILSVRC-2012-like: about 110 KB, mostly 500 x 375 or 500 x 333, a few larger."""
  assert 90_000 <= images['mean_bytes'] <= 130_000, images
  assert 500 <= images['mean_long_side'] <= 560, images
  assert 340 <= images['mean_short_side'] <= 420, images
  assert images['min_side'] >= 333 and images['max_side'] <= 800, images


def test_bench_input_command_writes_per_core_rates_and_their_ratio(tmp_path):
  out = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.bench_input', f'--out={out}',
       f'--data_dir={tmp_path / "tfds"}', '--num_images=16', '--batch_size=8', '--repeats=1',
       '--warmup_batches=1', '--shapes_dataset=synthetic_shapes/tiny'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / 'bench_input.json').read_text())
  assert sorted(result['datasets']) == ['imagenet_like', 'synthetic_shapes']
  for name, entry in result['datasets'].items():
    for rate in RATES:
      value = entry['per_core'][rate]
      assert math.isfinite(value) and value > 0, (name, rate, value)
      assert entry['ms_per_image'][rate] == 1000.0 / value
    assert entry['ratio'] == entry['per_core']['pipeline'] / entry['per_core']['decode_resize']
    assert entry['images']['count'] == 16, name
    # What each iterator ships per image at configs/paper.py's 224 crops: float32 pixels and an
    # int32 label; or uint8 pixels, the label, the crop's top/left (int32), the flip (bool) and
    # the colour (3 float32).
    assert entry['bytes_per_image'] == {'pipeline': 224 * 224 * 3 * 4 + 4,
                                        'pipeline_device_augment': 224 * 224 * 3 + 4 + 8 + 1 + 12}
    for pipeline in ('pipeline', 'pipeline_device_augment'):
      assert entry['feed_per_host'][pipeline]['16'] == pytest.approx(
          16 * 1000 / entry['cpu_ms_per_image'][pipeline])
    assert set(entry['cpu_ms_per_image']) == set(RATES)
    if result['pinned_cpu'] is not None:  # one core: never more CPU seconds than wall seconds
      for rate in RATES:
        assert max(entry['rounds'][rate]['cpu_per_wall']) <= 1.05, (name, rate, entry['rounds'])
  assert result['datasets']['synthetic_shapes']['split'] == 'train[:16]'
  imagenet_like = result['datasets']['imagenet_like']
  _check_imagenet_like(imagenet_like['images'])
  # The headline figures are the ImageNet-like set's.
  assert result['per_core'] == imagenet_like['per_core']
  assert result['ratio'] == result['per_core']['pipeline'] / result['per_core']['decode_resize']
  assert result['target'] == 0.8 and result['target_met'] == (result['ratio'] >= 0.8)
  assert result['config']['mean_subtraction'] == 'image'  # configs/paper.py's preprocessing
  assert result['config']['pca_lighting_std'] == 0.1
  assert result['tensorflow_version'] and result['cpu_count'] >= 1
  assert '| imagenet_like (16) |' in proc.stdout and '| synthetic_shapes (16) |' in proc.stdout
  assert '| imagenet_like | device |' in proc.stdout and 'augment_on=device' in proc.stdout
  # Decoding less: the same 16 images as resized squares, both storages.
  resized = imagenet_like['resized']
  for rate in ('decode_256', 'pipeline_256', 'pipeline_raw'):
    assert math.isfinite(result['per_core'][rate]) and result['per_core'][rate] > 0, rate
  assert result['per_core']['decode_256'] == resized['jpeg']['per_core']['decode']
  assert result['per_core']['pipeline_raw'] == resized['raw']['per_core']['pipeline']
  assert resized['raw']['mean_bytes'] == 256 * 256 * 3 and resized['raw']['count'] == 16
  assert resized['raw']['difference_from_decode_resize']['max_abs_error'] == 0  # exact pixels
  jpeg = resized['jpeg']
  assert jpeg['count'] == 16 and jpeg['jpeg_quality'] == 90
  assert 10_000 < jpeg['mean_bytes'] < imagenet_like['images']['mean_bytes'] / 2
  assert 30 < jpeg['difference_from_decode_resize']['psnr_db'] < 60
  assert jpeg['difference_from_decode_resize']['mean_abs_error'] < 5
  assert '| JPEG q90 256 x 256 squares |' in proc.stdout
  assert '| raw uint8 256 x 256 squares | 196.6 |' in proc.stdout


def test_bench_input_refuses_non_positive_counts(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.bench_input', f'--out={tmp_path}', '--repeats=0'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and 'must be positive' in proc.stderr
