"""The conv layers' convolution, with a kernel gradient that XLA:CPU computes at matmul speed.

XLA differentiates a convolution's kernel as another convolution: the batch becomes the
contracted feature axis, the input's channels become the batch and the output map the kernel
window. On XLA:CPU (YNNPACK) that form ran conv3-conv5's kernel gradients at 31-38 GFLOP/s
where their forward passes reach 90-100, and conv1's at 5: its 3 input channels make a batch
of 3 (README, "Performance"). The same gradient is a sum over the kernel's offsets (i, j):

    dW[i, j] = sum over (image, y, x) of  input[image, s*y + i, s*x + j, :]^T  dY[image, y, x, :]

one (C_in x positions) by (positions x C_out) matrix product per offset, which runs at
matmul speed. A stride s > 1 (conv1's 4) is first turned into stride 1 by space-to-depth:
s x s blocks of the input become s*s*C_in channels, and a k x k kernel becomes a
ceil(k/s) x ceil(k/s) one over them, so conv1's 121 offsets with C_in = 3 become 9 with 48.

`weight_grad='offsets'` uses that form; 'xla' keeps XLA's own; 'auto' (the default) takes the
offsets on CPU only: cuDNN and the TPU compiler have their own fast kernel gradients. The
forward pass and the input gradient are XLA's either way, and the padding is passed to the
convolution rather than padded in front of it (YNNPACK ran a VALID convolution of a padded
input 3x slower than the same convolution padding itself).
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]

WEIGHT_GRADS = ('auto', 'offsets', 'xla')
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _conv(x: Array, w: Array, stride: int, padding: Padding) -> Array:
  return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_NHWC)


def space_to_depth(x: Array, block: int, rows: int, cols: int) -> Array:
  """[B, H, W, C] -> [B, rows, cols, block*block*C]: each block x block patch becomes channels
  (ordered row in the patch, column in the patch, C). H, W are cut or zero-padded to block*rows,
  block*cols first."""
  b, h, w, c = x.shape
  x = x[:, :block * rows, :block * cols]
  x = jnp.pad(x, ((0, 0), (0, block * rows - x.shape[1]), (0, block * cols - x.shape[2]), (0, 0)))
  x = x.reshape(b, rows, block, cols, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, rows, cols, block * block * c)


def kernel_grad_by_offsets(x: Array, dy: Array, kernel_shape: Sequence[int], stride: int,
                           padding: Padding) -> Array:
  """dL/dW of `conv(x, W)` from its output gradient `dy`: one matrix product per kernel offset.

  The offsets run in a loop (`lax.map`) so that only one offset's input window is copied out at a
  time (unrolled, the nine copies of conv3's window ran slower than the loop).
  """
  kh, kw, c_in, c_out = kernel_shape
  batch, out_h, out_w, _ = dy.shape
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  # Space-to-depth: a stride-s k x k convolution is a stride-1 ceil(k/s) x ceil(k/s) one.
  bh, bw = -(-kh // stride), -(-kw // stride)
  x = space_to_depth(x, stride, out_h - 1 + bh, out_w - 1 + bw) if stride > 1 else x
  channels = x.shape[-1]
  dy2 = dy.reshape(batch * out_h * out_w, c_out)

  def offset(k):
    i, j = k // bw, k % bw
    window = lax.dynamic_slice(x, (0, i, j, 0), (batch, out_h, out_w, channels))
    return window.reshape(-1, channels).T @ dy2

  grads = lax.map(offset, jnp.arange(bh * bw))  # [offsets, channels, c_out]
  if stride == 1:
    return grads.reshape(kh, kw, c_in, c_out)
  grads = grads.reshape(bh, bw, stride, stride, c_in, c_out).transpose(0, 2, 1, 3, 4, 5)
  return grads.reshape(bh * stride, bw * stride, c_in, c_out)[:kh, :kw]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_offsets(x: Array, w: Array, stride: int, padding: Padding) -> Array:
  return _conv(x, w, stride, padding)


def _conv_offsets_fwd(x, w, stride, padding):
  return _conv(x, w, stride, padding), (x, w)


def _conv_offsets_bwd(stride, padding, residuals, dy):
  x, w = residuals
  # XLA's input gradient (dead code, removed by XLA, where the input is the image).
  _, input_grad = jax.vjp(lambda x_: _conv(x_, w, stride, padding), x)
  return input_grad(dy)[0], kernel_grad_by_offsets(x, dy, w.shape, stride, padding)


_conv_offsets.defvjp(_conv_offsets_fwd, _conv_offsets_bwd)


def uses_offsets(weight_grad: str) -> bool:
  """'auto' -> the offsets on CPU (decided when the step is traced, for its backend)."""
  if weight_grad not in WEIGHT_GRADS:
    raise ValueError(f'config.model.weight_grad={weight_grad!r}: use one of {WEIGHT_GRADS}.')
  return weight_grad == 'offsets' or (weight_grad == 'auto' and jax.default_backend() == 'cpu')


def conv2d(x: Array, w: Array, stride: int, padding: Padding, weight_grad: str = 'auto') -> Array:
  """NHWC input, HWIO kernel, square stride, explicit (low, high) padding per spatial axis."""
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if uses_offsets(weight_grad):
    return _conv_offsets(x, w, int(stride), padding)
  return _conv(x, w, stride, padding)


def flax_conv_general_dilated(weight_grad: str):
  """`conv2d` with `lax.conv_general_dilated`'s signature, for `flax.linen.Conv`'s
  `conv_general_dilated` field (the parameters keep their names and shapes)."""

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                           precision=None):
    padding = ((0, 0), (0, 0)) if padding == 'VALID' else padding
    simple = (len(window_strides) == 2 and window_strides[0] == window_strides[1]
              and not isinstance(padding, str) and feature_group_count == 1
              and all(d == 1 for d in (lhs_dilation or (1, 1)) + (rhs_dilation or (1, 1)))
              and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
              == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
    if not simple:
      raise ValueError('alexnet_jax.convolution supports NHWC/HWIO convolutions with a square '
                       "stride, explicit or 'VALID' padding, no dilation and no feature groups.")
    return conv2d(lhs, rhs, window_strides[0], padding, weight_grad)

  return conv_general_dilated
