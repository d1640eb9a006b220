"""The paper's preprocessing of one example (sections 2 and 4.1), as pure TF functions.

Every image is resized so its shorter side is `resize_size` (256) and its central 256 x 256
patch kept (records.decode_and_resize decodes only the part of the JPEG that patch needs). From
there:
- mean subtraction (`spec.mean_subtraction`): a constant `mean_rgb`, the training set's mean
  pixel, or its mean 256 x 256 image (the paper), subtracted before cropping so the mean is
  cropped with the image; then an optional division by `std_rgb` (not the paper's);
- training: the paper's colour noise along the RGB principal components
  (`pca_lighting_std`, 0.1 in the paper; eigenvectors published or computed from the training
  set), a random 224 x 224 patch and its mirror image with probability 1/2; or, as an option,
  the modern random-resized crop (`train_crop='random_resized_crop'`);
- evaluation: the central 224 x 224 patch, or the paper's ten patches ([10, S, S, 3]).
With augment_on='device' (core/augment.py) the host stops at the uint8 crop (or, for the ten
patches, the square) and ships the crop's random draws instead of applying them: the jitted step
flips, adds the colour noise, subtracts the mean and casts, with the same numbers.

Randomness comes from stateless TF ops and a seed the caller passes (streams.py folds in the
example's position), so an example's augmentation is a function of its seed alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from alexnet_jax.data import resized_dataset
from alexnet_jax.data.records import decode_and_resize
from alexnet_jax.data.spec import DataSpec

# Eigen-decomposition of the RGB covariance of ImageNet pixels in [0, 1] (docs/alexnet2012.md,
# section 4.1): the published values, used when spec.pca_eigen = 'published'.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
              (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))  # columns are the eigenvectors


def square_decoder(spec: DataSpec) -> Callable[[tf.Tensor], tf.Tensor]:
  """record image -> the uint8 resize_size square: `decode_and_resize` of the JPEG, or, from a
  resized dataset (spec.resized), only the decoding its storage needs."""
  if spec.resized:
    return lambda image: resized_dataset.decode_square(image, spec.resized, spec.resize_size)
  return lambda jpeg: decode_and_resize(jpeg, spec.resize_size)


def decode_random_resized_crop(jpeg_bytes: tf.Tensor, seed: tf.Tensor, image_size: int,
                               area_range: Sequence[float] = (0.08, 1.0),
                               aspect_ratio_range: Sequence[float] = (3 / 4, 4 / 3)) -> tf.Tensor:
  """The modern "Inception" crop (not the paper's): a random box of `area_range` of the image
  and `aspect_ratio_range`, decoded alone and resized to `image_size` square; then a flip with
  probability 1/2. float32 in [0, 255]. `seed`: a stateless seed, shape [2]."""
  box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  shape = tf.image.extract_jpeg_shape(jpeg_bytes)
  begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=box_seed,
      min_object_covered=0.0, aspect_ratio_range=tuple(aspect_ratio_range),
      area_range=tuple(area_range), max_attempts=10, use_image_if_no_bounding_boxes=True)
  window = tf.concat([begin[:2], box_size[:2]], 0)
  image = tf.image.decode_and_crop_jpeg(jpeg_bytes, window, channels=3,
                                        dct_method='INTEGER_ACCURATE', try_recover_truncated=True)
  image = tf.image.resize(image, [image_size, image_size], method='bilinear', antialias=True)
  image = _flip(image, flip_seed)
  return tf.ensure_shape(image, [image_size, image_size, 3])


def _flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mirrored left-right with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed=seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def random_crop_and_flip(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
  """A uniformly random `image_size` square of `image`, mirrored left-right with probability 1/2.

  `seed` is a stateless seed (shape [2] int); equal seeds give equal crops.
  """
  top, left, flip = crop_draws(seed, tf.shape(image), image_size)
  image = image[top:top + image_size, left:left + image_size]
  image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
  return tf.ensure_shape(image, [image_size, image_size, image.shape[-1]])


def crop_draws(seed: tf.Tensor, shape: tf.Tensor, image_size: int
               ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(top, left, flip) of random_crop_and_flip for an image of `shape`: one function for both
  places the draws are made (the host path and the draws shipped with augment_on='device'),
  so the two modes crop and mirror every example alike."""
  seeds = tf.random.experimental.stateless_split(seed, num=3)
  top = tf.random.stateless_uniform(
      [], seed=seeds[0], minval=0, maxval=shape[0] - image_size + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform(
      [], seed=seeds[1], minval=0, maxval=shape[1] - image_size + 1, dtype=tf.int32)
  return top, left, tf.random.stateless_uniform([], seed=seeds[2]) < 0.5


def center_crop(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """The central `image_size` square (offsets rounded down, as for the 256 patch)."""
  shape = tf.shape(image)
  top = (shape[0] - image_size) // 2
  left = (shape[1] - image_size) // 2
  image = image[top:top + image_size, left:left + image_size]
  return tf.ensure_shape(image, [image_size, image_size, image.shape[-1]])


def ten_crop(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """The paper's test patches [10, S, S, C]: top-left, top-right, bottom-left, bottom-right and
  centre `image_size` squares of `image`, then the same five mirrored left-right."""
  shape = tf.shape(image)
  bottom, right = shape[0] - image_size, shape[1] - image_size
  corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
  crops = tf.stack([image[t:t + image_size, l:l + image_size] for t, l in corners])
  crops = tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)
  return tf.ensure_shape(crops, [10, image_size, image_size, image.shape[-1]])


def normalize(image: tf.Tensor, mean: Any, std_rgb: Sequence[float] | None = None) -> tf.Tensor:
  """float32 pixels in [0, 255] minus the mean: per channel ([3]) or the mean image (cropped
  like `image`). The paper stops there (`std_rgb=None`); dividing by a std is for the 'he' init
  of short runs (configs/tiny.py)."""
  image = tf.cast(image, tf.float32) - tf.cast(mean, tf.float32)
  if std_rgb is not None and len(std_rgb):
    image = image / tf.constant(std_rgb, tf.float32)
  return image


def pca_noise(seed: tf.Tensor, alpha_std: float, eigval: Any = PCA_EIGVAL,
              eigvec: Any = PCA_EIGVEC) -> tf.Tensor:
  """sum_i p_i * alpha_i * lambda_i, alpha_i ~ N(0, alpha_std), in [0, 255] pixel units [3].

  `eigval`/`eigvec` (columns) are for pixels in [0, 1], hence the factor 255.
  """
  alpha = tf.random.stateless_normal([3], seed=seed, stddev=alpha_std)
  rgb = tf.linalg.matvec(tf.constant(eigvec, tf.float32), alpha * tf.constant(eigval, tf.float32))
  return rgb * 255.0


def pca_lighting(image: tf.Tensor, seed: tf.Tensor, alpha_std: float, eigval: Any = PCA_EIGVAL,
                 eigvec: Any = PCA_EIGVEC) -> tf.Tensor:
  """The paper's colour augmentation: the same `pca_noise` added to every pixel of `image`
  (float, [0, 255]). Defaults: the paper's published ImageNet values (docs/alexnet2012.md, section 4.1)."""
  return tf.cast(image, tf.float32) + pca_noise(seed, alpha_std, eigval, eigvec)


# ---------------------------------------------------------------------------------------------
# Training-set statistics (mean image, RGB PCA): computed once, cached beside the dataset.



@dataclasses.dataclass(frozen=True)
class PixelTransform:
  """What the per-example functions subtract, divide by and add, resolved from the spec and
  (where it asks for them) the training-set statistics (pipeline.pixel_transform)."""
  mean: np.ndarray  # [3], or the mean image [resize_size, resize_size, 3]; [0, 255] pixels
  std: np.ndarray | None  # [3] or None (the paper: no division)
  pca_std: float  # alpha ~ N(0, pca_std); 0: no colour noise
  eigval: np.ndarray  # [3], for [0, 1] pixels
  eigvec: np.ndarray  # [3, 3], columns


def train_example(image_or_jpeg: tf.Tensor, seed: tf.Tensor, spec: DataSpec,
                  transform: PixelTransform) -> tf.Tensor:
  """One training image, float32 [S, S, 3]. `spec.train_crop`:
  'random_crop' (the paper): the decoded resize_size square (uint8) -> a random image_size
    crop, flipped with probability 1/2 -> colour noise -> minus the mean (image, cropped and
    flipped alike);
  'random_resized_crop': JPEG bytes -> a random box decoded and resized -> flip -> colour noise
    -> minus the per-channel mean (spec.mean_subtraction 'image' is refused for it).
  Cropping first gives the numbers of normalising the whole square then cropping (every later
  step is per pixel) on 224^2 pixels instead of 256^2, and moves uint8s, not floats."""
  crop_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  mean = transform.mean
  if spec.train_crop == 'random_resized_crop':
    image = decode_random_resized_crop(image_or_jpeg, crop_seed, spec.image_size,
                                       area_range=spec.rrc_area_range)
  else:
    crop = lambda x: random_crop_and_flip(x, crop_seed, spec.image_size)
    image, mean = crop(image_or_jpeg), _cropped_mean(mean, crop)
  if transform.pca_std > 0:
    image = pca_lighting(image, colour_seed, transform.pca_std, transform.eigval,
                         transform.eigvec)
  return normalize(image, mean, transform.std)


def eval_example(image: tf.Tensor, crops: str, image_size: int,
                 transform: PixelTransform) -> tf.Tensor:
  """A decoded resize_size square -> the central crop [S, S, 3] ('center') or the paper's ten
  patches [10, S, S, 3] ('ten') -> minus the mean (image, cropped alike)."""
  mean = transform.mean
  if crops == 'ten':  # the square once, not ten overlapping patches
    return ten_crop(normalize(image, mean, transform.std), image_size)
  crop = lambda x: center_crop(x, image_size)
  return normalize(crop(image), _cropped_mean(mean, crop), transform.std)


def train_example_for_device(image: tf.Tensor, seed: tf.Tensor, spec: DataSpec,
                             transform: PixelTransform) -> dict:
  """The host's half of train_example with augment_on='device' (the paper's random crop only):
  the uint8 crop, unflipped, and the draws train_example makes from the same `seed` (crop
  offsets, flip bit, colour noise in pixel units), for core/augment.train_images to finish."""
  crop_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  size = spec.image_size
  top, left, flip = crop_draws(crop_seed, tf.shape(image), size)
  crop = tf.ensure_shape(image[top:top + size, left:left + size], [size, size, 3])
  colour = (pca_noise(colour_seed, transform.pca_std, transform.eigval, transform.eigvec)
            if transform.pca_std > 0 else tf.zeros([3], tf.float32))
  return {'image': crop, 'crop': tf.stack([top, left]), 'flip': flip, 'colour': colour}


def eval_example_for_device(image: tf.Tensor, crops: str, image_size: int) -> tf.Tensor:
  """The host's half of eval_example with augment_on='device': the uint8 centre crop, or for
  the ten patches the whole square (core/augment.eval_images cuts them)."""
  return image if crops == 'ten' else center_crop(image, image_size)


def device_constants(transform: PixelTransform) -> dict:
  """What core/augment.py subtracts and divides by, shipped once per run: {'mean': [R, R, 3] or
  [3], 'std': [3] (ones where the spec divides by nothing: x / 1 is x)}, float32."""
  std = transform.std if transform.std is not None else np.ones(3, np.float32)
  return {'mean': np.asarray(transform.mean, np.float32), 'std': np.asarray(std, np.float32)}


def _cropped_mean(mean: np.ndarray, crop) -> Any:
  """The mean to subtract from `crop(image)`: the mean image cropped alike, or the [3] mean."""
  return crop(tf.constant(mean)) if mean.ndim == 3 else mean


# ---------------------------------------------------------------------------------------------
# Iterators.


# The map functions are plain TF (no Python control flow on tensors); skipping AutoGraph avoids
# its "could not transform" warnings with the installed gast.
_no_autograph = tf.autograph.experimental.do_not_convert
