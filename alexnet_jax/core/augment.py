"""Augmentation on the device (config.augment_on): the per-pixel half of the
paper's preprocessing as a pure JAX function, run inside the jitted train and eval steps.

Why: on an accelerator the host's CPU cores, not the chip, limit AlexNet. With augment_on='host'
each host crops, flips, adds the colour noise, subtracts the mean image and ships float32
[B, 224, 224, 3] (602 KB per image). With 'device' the host does only what needs the image's
random draws or the JPEG (decoding, resizing, the random 224 crop, the draws themselves) and
ships uint8 pixels (150 KB per training image) with a few bytes of draws per image; the step
does the rest, which is a few element-wise operations per pixel on the chip.

The draws are the host path's own (data/preprocess.train_example_for_device evaluates the same
stateless TF ops with the same seeds), so the two modes give the same images up to float
rounding, and the stream stays a pure function of the config and the step.

What travels to the device:
- per example (sharded like the batch): 'image' uint8, the random crop [B, S, S, 3] (training),
  the centre crop [B, S, S, 3] (evaluation, 'center') or the resize_size square [B, R, R, 3]
  (evaluation, 'ten': the ten patches are cut on the device, 7.7 times fewer bytes than ten
  crops); 'label'; for training 'crop' int32 [B, 2] (top, left of the crop in the square),
  'flip' bool [B], 'colour' float32 [B, 3] (the PCA colour noise, in pixel units; zeros when
  off); for evaluation 'mask'.
- per run (replicated, put on the devices once and passed with every batch): 'mean' float32
  [R, R, 3] (the mean image) or [3], and 'std' float32 [3] (ones: no division). They are
  arguments of the step, not constants compiled into it, because the mean image is computed from
  the dataset after the run's programs are built (and compiled ahead of time).
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

AUGMENT_ON = ('host', 'device', 'auto')
# Keys of a device-augmented batch that are the same for every example (replicated).
CONSTANT_KEYS = ('mean', 'std')
TRAIN_KEYS = ('image', 'label', 'crop', 'flip', 'colour')
EVAL_KEYS = ('image', 'label', 'mask')


def resolve(config: ml_collections.ConfigDict, platform: str) -> str:
  """'host' or 'device': config.augment_on for a run on `platform`. 'auto' is 'device' on
  accelerators, where the host's CPU time per image limits training and the chip's share of the
  work is negligible, and 'host' on the CPU backend, where the "device" is the same cores
  (docs/measurements/2026-11-26-input-pipeline.md gives the measurements). Where 'device' is
  refused (config.check: the random-resized crop, which resizes into float pixels on the host;
  ten patches of a square no larger than the crop) 'auto' is 'host'."""
  if config.augment_on != 'auto':
    return config.augment_on
  refused = config.train_crop != 'random_crop' or (
      config.resize_size == config.image_size and 'ten' in (config.eval_crops,
                                                            config.final_eval_crops))
  return 'host' if refused or platform == 'cpu' else 'device'


def _crop_mean(mean: jax.Array, crop: jax.Array, size: int) -> jax.Array:
  """The mean image's window under each example's crop [B, S, S, 3] (a [3] mean as it is)."""
  if mean.ndim == 1:
    return mean
  return jax.vmap(lambda tl: jax.lax.dynamic_slice(mean, (tl[0], tl[1], 0), (size, size, 3)))(
      crop)


def train_images(batch: dict) -> jax.Array:
  """float32 [B, S, S, 3]: (crop + colour - mean cropped alike) / std, mirrored where 'flip'.

  The host path flips the uint8 crop and the mean's window before the arithmetic; every later
  operation is per pixel, so flipping the result gives the same numbers."""
  image = batch['image']
  size = image.shape[1]
  mean = _crop_mean(batch['mean'], batch['crop'], size)
  x = image.astype(jnp.float32) + batch['colour'][:, None, None, :]
  x = (x - mean) / batch['std']
  return jnp.where(batch['flip'][:, None, None, None], x[:, :, ::-1], x)


def eval_images(batch: dict, image_size: int) -> jax.Array:
  """float32 [B, S, S, 3] (the centre crop) or [B, 10, S, S, 3] (the paper's ten patches: four
  corners, centre, and their mirror images), minus the mean cropped alike, divided by std.

  Which one is told by the shipped image's side: S for the centre crop, resize_size (> S,
  config.check) for the square the ten patches are cut from."""
  image, mean, std = batch['image'], batch['mean'], batch['std']
  side = image.shape[1]
  if side == image_size:  # the centre crop, cut on the host; the mean's centre likewise
    if mean.ndim == 3:
      top, left = (mean.shape[0] - side) // 2, (mean.shape[1] - side) // 2
      mean = mean[top:top + side, left:left + side]
    return (image.astype(jnp.float32) - mean) / std
  x = (image.astype(jnp.float32) - mean) / std  # the square once, not ten overlapping patches
  end = side - image_size
  corners = [(0, 0), (0, end), (end, 0), (end, end), (end // 2, end // 2)]
  crops = jnp.stack([x[:, t:t + image_size, l:l + image_size] for t, l in corners], axis=1)
  return jnp.concatenate([crops, crops[:, :, :, ::-1]], axis=1)


def images(batch: dict, image_size: int) -> jax.Array:
  """The float32 network input of a device-augmented training ('crop' in it) or eval batch."""
  return train_images(batch) if 'crop' in batch else eval_images(batch, image_size)


def float_batch(batch: dict, image_size: int) -> dict:
  """The batch the host path would have shipped: 'image' float32, the draws and constants
  dropped (what steps.train_step and steps.eval_step take)."""
  out = {k: v for k, v in batch.items()
         if k not in CONSTANT_KEYS + ('crop', 'flip', 'colour')}
  out['image'] = images(batch, image_size)
  return out


def batch_shardings(keys: Sequence[str], batch_sharding: jax.sharding.Sharding,
                    replicated: jax.sharding.Sharding) -> dict:
  """Per key of a device-augmented batch: the batch's sharding, or replicated for the constants."""
  return {k: replicated if k in CONSTANT_KEYS else batch_sharding for k in keys}


def abstract_batch(config: ml_collections.ConfigDict, crops: Optional[str], batch_sharding: jax.sharding.Sharding,
                   replicated: jax.sharding.Sharding) -> dict:
  """Shapes, dtypes and shardings of a device-augmented batch (training if `crops` is None)."""
  spec = lambda shape, dtype, sharding=batch_sharding: jax.ShapeDtypeStruct(
      shape, dtype, sharding=sharding)
  size, square = config.image_size, config.resize_size
  mean_shape = (square, square, 3) if config.mean_subtraction == 'image' else (3,)
  constants = {'mean': spec(mean_shape, jnp.float32, replicated),
               'std': spec((3,), jnp.float32, replicated)}
  if crops is None:
    b = config.batch_size
    return {'image': spec((b, size, size, 3), jnp.uint8), 'label': spec((b,), jnp.int32),
            'crop': spec((b, 2), jnp.int32), 'flip': spec((b,), jnp.bool_),
            'colour': spec((b, 3), jnp.float32), **constants}
  b = config.eval_batch_size
  side = square if crops == 'ten' else size
  return {'image': spec((b, side, side, 3), jnp.uint8), 'label': spec((b,), jnp.int32),
          'mask': spec((b,), jnp.float32), **constants}
