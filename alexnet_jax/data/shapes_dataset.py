"""`synthetic_shapes`: a small, learnable, ImageNet-shaped tfds dataset generated offline.

It lets the whole system (tfds -> tf.data -> AlexNet -> metrics) run end to end on a laptop
without ImageNet. Each image is an RGB JPEG of ImageNet-like size and aspect ratio showing one
shape or texture; the class is the shape, never the colour (foreground and background colours are
random), so a model has to look at edges and layout, as on real images. Classes are chosen to stay
the same under the paper's augmentation (horizontal flip, 224/256 crop).

Generation is deterministic: example `i` of split `s` is drawn from a numpy RNG seeded with
(config.seed, s, i), and PIL's JPEG encoder is deterministic, so the same config gives identical
bytes on every machine. Importing this module registers the builder with tfds:

  import alexnet_jax.data.shapes_dataset  # noqa: F401
  builder = tfds.builder('synthetic_shapes/tiny', data_dir=...)
  builder.download_and_prepare()  # generates once; later calls reuse the files
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import math
import os
from typing import Iterator

from etils import epath
import numpy as np
from PIL import Image
from PIL import ImageDraw
import tensorflow_datasets as tfds

# Ten classes that survive a horizontal flip and a 224/256 crop. Order defines the label ids.
CLASS_NAMES = (
    'circle',
    'square',
    'triangle',
    'cross',
    'star',
    'ring',
    'horizontal_stripes',
    'vertical_stripes',
    'checkerboard',
    'diagonal_stripes',
)

_SPLIT_IDS = {'train': 0, 'validation': 1}
_JPEG_QUALITY = 90
_NOISE_AMPLITUDE = 10  # mild sensor-like noise, in [0, 255] units
_MIN_COLOUR_DISTANCE = 140.0  # Euclidean RGB distance between foreground and background
_MAX_TILT_DEGREES = 20.0


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
  """Size of the generated dataset; `seed` fixes every byte of it."""

  num_classes: int = 10
  train_examples: int = 2600
  validation_examples: int = 500
  min_side: int = 200
  max_side: int = 500
  seed: int = 0


def _already_registered(name: str) -> bool:
  """True if tfds knows `name` already (module imported twice, e.g. under another name)."""
  # tfds has no public "is registered" query that avoids importing every legacy builder.
  registry = getattr(tfds.core.registered, '_DATASET_REGISTRY', {})
  return name in registry


class SyntheticShapes(
    tfds.core.GeneratorBasedBuilder,
    skip_registration=_already_registered('synthetic_shapes'),
):
  """Shapes and textures on random colours: learnable in minutes, not by colour alone."""

  name = 'synthetic_shapes'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SyntheticShapesConfig(
          name='default',
          description='10 classes, ImageNet-like sizes (200-500 px a side).',
          num_classes=10,
          train_examples=2600,
          validation_examples=500,
          min_side=200,
          max_side=500,
          seed=0,
      ),
      SyntheticShapesConfig(
          name='tiny',
          description='10 classes, 40-80 px a side; for tests (generates in seconds).',
          num_classes=10,
          train_examples=320,
          validation_examples=80,
          min_side=40,
          max_side=80,
          seed=0,
      ),
  ]
  DEFAULT_CONFIG_NAME = 'default'
  # tfds derives this via `importlib_resources`, which tfds 4.9.10 uses but does not declare as a
  # dependency on Python >= 3.9; a plain path avoids that import (it only locates checksums.tsv).
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if not 1 <= cfg.num_classes <= len(CLASS_NAMES):
      raise ValueError(f'num_classes must be in [1, {len(CLASS_NAMES)}], got {cfg.num_classes}.')
    return self.dataset_info_from_configs(
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=list(CLASS_NAMES[: cfg.num_classes])),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    return {
        'train': self._generate_examples('train', cfg.train_examples),
        'validation': self._generate_examples('validation', cfg.validation_examples),
    }

  def _generate_examples(self, split: str, count: int) -> Iterator[tuple[int, dict]]:
    """Drawn on every core: numpy and PIL's drawing and JPEG encoder release the GIL, and
    each example depends only on (seed, split, index), so threads change no byte."""
    cfg = self.builder_config

    def example(index: int) -> dict:
      label = index % cfg.num_classes  # class-balanced by construction
      image = render_example(example_rng(cfg.seed, split, index), label, cfg.min_side,
                             cfg.max_side)
      return {'image': encode_jpeg(image), 'label': label}

    chunk = 64  # examples in flight: bounded memory for any count
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      for start in range(0, count, chunk):
        indices = range(start, min(start + chunk, count))
        yield from zip(indices, pool.map(example, indices))


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The RNG of one example; independent of generation order, so any example can be redrawn."""
  return np.random.default_rng([seed, _SPLIT_IDS[split], index])


def encode_jpeg(image: np.ndarray) -> bytes:
  """JPEG bytes of an RGB uint8 image (PIL's encoder is deterministic for a given input)."""
  buffer = io.BytesIO()
  Image.fromarray(image, mode='RGB').save(buffer, format='JPEG', quality=_JPEG_QUALITY)
  return buffer.getvalue()


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Random foreground/background colours far enough apart that edges are always clear."""
  while True:
    fg, bg = rng.integers(0, 256, size=(2, 3))
    if np.linalg.norm(fg - bg) >= _MIN_COLOUR_DISTANCE:
      return fg.astype(np.uint8), bg.astype(np.uint8)


def _regular_polygon(cx: float, cy: float, radius: float, sides: int, angle: float) -> list:
  return [
      (cx + radius * math.cos(angle + 2 * math.pi * k / sides),
       cy + radius * math.sin(angle + 2 * math.pi * k / sides))
      for k in range(sides)
  ]


def _star(cx: float, cy: float, radius: float, angle: float) -> list:
  points = []
  for k in range(10):
    r = radius if k % 2 == 0 else 0.42 * radius
    a = angle + math.pi * k / 5
    points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
  return points


def _cross(cx: float, cy: float, radius: float, angle: float, arm: float) -> list:
  """A plus sign of half-length `radius` and half-width `arm`, rotated by `angle`."""
  outline = [(arm, radius), (arm, arm), (radius, arm), (radius, -arm), (arm, -arm),
             (arm, -radius), (-arm, -radius), (-arm, -arm), (-radius, -arm), (-radius, arm),
             (-arm, arm), (-arm, radius)]
  c, s = math.cos(angle), math.sin(angle)
  return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in outline]


def _draw_shape(name: str, rng: np.random.Generator, height: int, width: int,
                fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
  """One filled shape, 40-80% of the shorter side across, near the centre, near upright."""
  side = min(height, width)
  radius = 0.5 * side * rng.uniform(0.4, 0.8)
  # Keep the shape inside the central square (what survives the 256 crop), mostly inside the
  # 224/256 random crop: the further out it may go, the smaller it is.
  max_offset = max(0.03, 0.40 - radius / side) * side
  cx = width / 2 + rng.uniform(-max_offset, max_offset)
  cy = height / 2 + rng.uniform(-max_offset, max_offset)
  # A modest tilt around an upright pose: enough variety, while each class keeps one look
  # (a free rotation made square/cross/star much slower to learn).
  tilt = math.radians(rng.uniform(-_MAX_TILT_DEGREES, _MAX_TILT_DEGREES))
  canvas = Image.new('RGB', (width, height), tuple(int(v) for v in bg))
  draw = ImageDraw.Draw(canvas)
  colour = tuple(int(v) for v in fg)
  if name == 'circle':
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
  elif name == 'ring':
    inner = radius * rng.uniform(0.45, 0.65)
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=tuple(int(v) for v in bg))
  elif name == 'square':  # polygons are scaled up a little so their area is like the disc's
    draw.polygon(_regular_polygon(cx, cy, 1.15 * radius, 4, math.pi / 4 + tilt), fill=colour)
  elif name == 'triangle':
    draw.polygon(_regular_polygon(cx, cy, 1.25 * radius, 3, -math.pi / 2 + tilt), fill=colour)
  elif name == 'star':
    draw.polygon(_star(cx, cy, 1.15 * radius, -math.pi / 2 + tilt), fill=colour)
  elif name == 'cross':
    draw.polygon(_cross(cx, cy, radius, tilt, radius * rng.uniform(0.25, 0.35)), fill=colour)
  else:
    raise ValueError(f'Unknown shape {name!r}.')
  return np.asarray(canvas)


def _draw_texture(name: str, rng: np.random.Generator, height: int, width: int,
                  fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
  """A two-colour periodic texture filling the image; period scales with the image."""
  side = min(height, width)
  period = side * rng.uniform(0.12, 0.22)  # 28-56 px after resizing the short side to 256
  if name == 'diagonal_stripes':
    # Either diagonal: a horizontal flip maps one onto the other, so both are one class.
    angle = rng.choice([45.0, 135.0]) + rng.uniform(-12, 12)
  else:
    angle = rng.uniform(-10, 10)
  theta = math.radians(angle)
  half = period / 2
  phase_u, phase_v = rng.uniform(0, period, size=2)
  ys = (np.arange(height, dtype=np.float32) - height / 2)[:, None]
  xs = (np.arange(width, dtype=np.float32) - width / 2)[None, :]

  def band(cos: float, sin: float, phase: float) -> np.ndarray:
    # Index of the half-period band along the rotated axis (cos, sin); its parity is the colour.
    return np.floor((xs * cos + ys * sin + phase) / half).astype(np.int32)

  c, s = math.cos(theta), math.sin(theta)
  if name == 'horizontal_stripes':
    on = band(-s, c, phase_v) % 2 == 0
  elif name in ('vertical_stripes', 'diagonal_stripes'):
    on = band(c, s, phase_u) % 2 == 0
  elif name == 'checkerboard':
    on = (band(c, s, phase_u) + band(-s, c, phase_v)) % 2 == 0
  else:
    raise ValueError(f'Unknown texture {name!r}.')
  return np.stack([bg, fg])[on.view(np.uint8)]  # colour lookup: faster than np.where


def render_example(rng: np.random.Generator, label: int, min_side: int,
                   max_side: int) -> np.ndarray:
  """The RGB uint8 image of class `label`, of random size in [min_side, max_side] per side."""
  height, width = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
  fg, bg = _contrasting_colours(rng)
  name = CLASS_NAMES[label]
  if name.endswith('stripes') or name == 'checkerboard':
    image = _draw_texture(name, rng, height, width, fg, bg)
  else:
    image = _draw_shape(name, rng, height, width, fg, bg)
  # Mild luminance noise, uniform integers in [-a, a] (std about a / sqrt(3)), shared by the
  # three channels: a third of the cost of per-channel normal noise, which dominated generation.
  noise = rng.integers(-_NOISE_AMPLITUDE, _NOISE_AMPLITUDE + 1, size=(height, width, 1),
                       dtype=np.int16)
  return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
