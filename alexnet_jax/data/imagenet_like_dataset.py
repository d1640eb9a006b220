"""`imagenet_like_jpegs`: a tfds dataset of JPEGs shaped like ILSVRC-2012's, generated here.

What the input pipeline costs per image depends on the JPEGs it decodes: their dimensions, their
file sizes and what their content does to the encoder. ImageNet itself needs an account and
150 GB, so the input benchmark (perf/bench_input.py) measures on these instead: the sizes of
ILSVRC-2012's training JPEGs (`image_size`), photograph-like content (`render_image`: regions
with sharp edges, an illumination gradient, 1/f texture, sensor noise) and the mean file size
(PIL's quality 92 on that content). Example i is a function of (seed, i) only, so a dataset of
any count is the same images as a larger one's prefix.
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

NAME = 'imagenet_like_jpegs'
# ILSVRC-2012's training JPEGs: about 110 KB on average (138 GB / 1.28 M), most of them 500 px on
# the long side (500 x 375, 500 x 333; 3:4 portraits), a minority larger. PIL's quality 92 on
# `render_image`'s content gives that mean size (measured by perf/bench_input.py, in its JSON's
# "images").
JPEG_QUALITY = 92
_NUM_CLASSES = 1000


def image_size(rng: np.random.Generator) -> tuple[int, int]:
  """(height, width): 500 x 375 (75 %), 500 x 333 (15 %), or 4:3 with a long side of 600-800
  (10 %); a quarter of them portrait."""
  u = rng.uniform()
  if u < 0.75:
    width, height = 500, 375
  elif u < 0.9:
    width, height = 500, 333
  else:
    width = int(rng.integers(600, 801))
    height = width * 3 // 4
  if rng.uniform() < 0.25:
    width, height = height, width
  return height, width


def _pink_noise(rng: np.random.Generator, height: int, width: int,
                exponent: float) -> np.ndarray:
  """Gaussian noise with amplitude spectrum 1 / f^exponent (natural images: about 1), std 1."""
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.rfftfreq(width)[None, :]
  f = np.sqrt(fx * fx + fy * fy)
  f[0, 0] = 1.0
  shape = (height, width // 2 + 1)
  spectrum = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / f ** exponent
  spectrum[0, 0] = 0.0
  field = np.fft.irfft2(spectrum, s=(height, width))
  return (field / field.std()).astype(np.float32)


def render_image(rng: np.random.Generator) -> np.ndarray:
  """An RGB uint8 image with the statistics a JPEG encoder and decoder care about in a photograph:
  regions of different colours with sharp edges (3-8 ellipses and polygons over a background),
  an illumination gradient, texture at every scale (1/f luminance noise, smoother colour noise)
  and mild sensor noise. Not meant to look like anything."""
  height, width = image_size(rng)
  luminance = _pink_noise(rng, height, width, 1.0)
  chroma1, chroma2 = _pink_noise(rng, height, width, 1.5), _pink_noise(rng, height, width, 1.5)
  regions = Image.new('L', (width, height), 0)
  draw = ImageDraw.Draw(regions)
  count = int(rng.integers(3, 9))
  for k in range(1, count + 1):
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    radius = rng.uniform(0.08, 0.35) * min(height, width)
    if rng.uniform() < 0.5:
      squash = rng.uniform(0.5, 1.5)
      draw.ellipse([cx - radius, cy - radius * squash, cx + radius, cy + radius * squash], fill=k)
    else:
      sides, angle = int(rng.integers(3, 7)), rng.uniform(0, 2 * math.pi)
      draw.polygon([(cx + radius * math.cos(angle + 2 * math.pi * i / sides),
                     cy + radius * math.sin(angle + 2 * math.pi * i / sides))
                    for i in range(sides)], fill=k)
  palette = rng.uniform(30, 220, size=(count + 1, 3)).astype(np.float32)
  image = palette[np.asarray(regions)]
  image *= np.linspace(rng.uniform(0.7, 1.1), rng.uniform(0.8, 1.2), height,
                       dtype=np.float32)[:, None, None]
  image += 30 * luminance[..., None] + np.stack(
      [12 * chroma1, -6 * chroma1 - 6 * chroma2, 12 * chroma2], axis=-1)
  image += rng.normal(0, 2, size=(height, width, 1)).astype(np.float32)
  return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image, mode='RGB').save(buffer, format='JPEG', quality=JPEG_QUALITY)
  return buffer.getvalue()


@dataclasses.dataclass(eq=False)
class ImageNetLikeConfig(tfds.core.BuilderConfig):
  num_images: int = 500
  seed: int = 0


def _already_registered(name: str) -> bool:
  return name in getattr(tfds.core.registered, '_DATASET_REGISTRY', {})


class ImageNetLikeJpegs(tfds.core.GeneratorBasedBuilder,
                        skip_registration=_already_registered(NAME)):
  """`num_images` ImageNet-like JPEGs (render_image), one 'train' split, labels i % 1000 (only
  so that the records have ImageNet's layout: JPEG `image`, integer `label`)."""

  name = NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # `dataset_builder` makes one config per count and seed (named n<count>_seed<seed>).
  BUILDER_CONFIGS = [ImageNetLikeConfig(name='default', num_images=500, seed=0)]
  code_path = epath.Path(__file__)  # as in shapes_dataset.py: no importlib_resources

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='JPEGs with ILSVRC-2012-like dimensions and file sizes (perf/bench_input.py).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(num_classes=_NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    return {'train': self._generate_examples(self.builder_config.num_images)}

  def _generate_examples(self, count: int) -> Iterator[tuple[int, dict]]:
    """On every core (numpy's FFT and PIL's encoder release the GIL); example i depends only on
    (seed, i)."""
    seed = self.builder_config.seed

    def example(index: int) -> dict:
      image = render_image(np.random.default_rng([seed, index]))
      return {'image': encode_jpeg(image), 'label': index % _NUM_CLASSES}

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      for start in range(0, count, 64):
        indices = range(start, min(start + 64, count))
        yield from zip(indices, pool.map(example, indices))


def dataset_builder(num_images: int, data_dir: str | None,
                    seed: int = 0) -> tfds.core.DatasetBuilder:
  """The builder of `num_images` ImageNet-like JPEGs in data_dir (one config per count and seed,
  so datasets of other sizes are kept beside it)."""
  config = ImageNetLikeConfig(name=f'n{num_images}_seed{seed}', num_images=num_images, seed=seed,
                              description=f'{num_images} ImageNet-like JPEGs, seed {seed}.')
  return ImageNetLikeJpegs(config=config, data_dir=data_dir)
