"""The network's three costly operations, LRN, max pooling and convolution, in two
implementations that compute the same function:

- 'reference': the paper's formulas, differentiated by JAX. LRN by its formula (docs/alexnet2012.md,
  sec. 3.3), max pooling by `lax.reduce_window` (sec. 3.4), convolutions by
  `lax.conv_general_dilated`, with XLA's own gradients for all three. This runs on GPU and TPU:
  cuDNN and the TPU compiler have fast gradients of their own, and nothing there needs the
  materialisation barriers of the CPU kernels (which would only stop fusions).
- 'cpu': hand-written gradients for XLA:CPU, where the project's tests and quick start run and
  automatic differentiation of the formulas is correct but slow (docs/measurements/
  2026-11-22-xeon-train-step.md has the measurements):

  - `conv2d`: XLA computes a convolution's kernel gradient as another convolution, with the
    batch as the contracted axis and the input's channels as the batch. XLA:CPU runs that
    convolution far below the speed of the forward pass, and conv1's worst of all (its 3 input
    channels make a batch of 3). The same gradient is a sum over the kernel's offsets (i, j):

        dW[i, j] = sum over (image, y, x) of input[image, s*y + i, s*x + j, :]^T dY[image, y, x, :]

    one (C_in x positions) by (positions x C_out) matrix product per offset, at matmul speed.
    A stride s > 1 (conv1's 4) is first made stride 1 by space-to-depth: s x s blocks of the
    input become s*s*C_in channels and a k x k kernel a ceil(k/s) x ceil(k/s) one over them, so
    conv1's 121 offsets with C_in = 3 become 9 with 48. The forward pass and the input gradient
    stay XLA's.
  - `local_response_norm`: XLA fused the forward formula into every consumer, so the max pool
    after it recomputed the power once per pooling view (9 times), forward and backward.
  - `max_pool`: the gradient of a strided view is a strided scatter (a `pad` with interior
    padding), 9 of them, each a slow pass over the pool's whole input; `reduce_window`'s own
    select-and-scatter gradient is slower still on XLA:CPU.

  LRN and max pooling therefore have a custom VJP whose saved values and incoming gradients are
  materialised (`optimization_barrier`: nothing is recomputed inside a fusion), with
  hand-written backward passes: LRN's in one elementwise pass, the pool's by stride phases.

The two agree to float rounding, ties included (a max pool's gradient goes to the first maximum
of its window, as `reduce_window`'s does); tests/test_kernels.py compares them on every op. One
difference: a NaN input always reaches the outputs of the cpu pool's windows that hold it, where
XLA:CPU's `reduce_window` may drop it (a 2 x 2 window [[0, 0], [nan, 1.5]] gives 1.5).

The choice is a config field, `config.model.kernels` in `KERNEL_CHOICES`; `resolve` turns it
into 'reference' or 'cpu' for the platform of the devices a run is built for ('auto': 'cpu' on
CPU, 'reference' elsewhere). That is the only place it is made: the devices may be a TPU or GPU
topology this process compiles for but does not run on, so nothing here asks JAX for its
default backend. Every op below takes the resolved choice as `impl`.
"""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]

KERNEL_CHOICES = ('auto', 'reference', 'cpu')
IMPLS = ('reference', 'cpu')
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def resolve(choice: str, platform: str) -> str:
  """`config.model.kernels` -> the implementation for devices of `platform` ('cpu', 'gpu',
  'cuda', 'rocm', 'tpu', as `jax.Device.platform`): 'auto' is 'cpu' on CPU and 'reference'
  elsewhere; 'reference' and 'cpu' are taken as they are (either runs on any platform)."""
  if choice not in KERNEL_CHOICES:
    raise ValueError(f'config.model.kernels={choice!r}: use one of {KERNEL_CHOICES}.')
  if choice == 'auto':
    return 'cpu' if platform == 'cpu' else 'reference'
  return choice


def _check(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f'impl={impl!r}: use one of {IMPLS} (resolve config.model.kernels, one of '
                     f'{KERNEL_CHOICES}, with kernels.resolve first).')
  return impl


# --- Convolution ----------------------------------------------------------------------------------


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
  groups = math.gcd(batch, 8)
  dy3 = dy.reshape(groups, -1, c_out)

  def offset(k):
    i, j = k // bw, k % bw
    window = lax.dynamic_slice(x, (0, i, j, 0), (batch, out_h, out_w, channels))
    # A fixed number of partial products (groups of images), summed in order: one product over
    # all positions let the matmul library split the long sum across threads differently for
    # different device counts (a 1-process and a 2-process run of a config then drifted apart).
    # Separate 2-D products, not one batched einsum: XLA:CPU gives 2-D ones to YNNPACK and
    # batched ones to Eigen, which made the quickstart's whole train step slower.
    groups_of_window = window.reshape(groups, -1, channels)
    return functools.reduce(jnp.add, [groups_of_window[g].T @ dy3[g] for g in range(groups)])

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


def conv2d(x: Array, w: Array, stride: int, padding: Padding, impl: str) -> Array:
  """NHWC input, HWIO kernel, square stride, explicit (low, high) padding per spatial axis.

  Forward pass and input gradient are XLA's in both implementations; the kernel gradient is
  XLA's ('reference') or `kernel_grad_by_offsets` ('cpu')."""
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if _check(impl) == 'cpu':
    return _conv_offsets(x, w, int(stride), padding)
  return _conv(x, w, int(stride), padding)


def flax_conv_general_dilated(impl: str):
  """`conv2d` with `lax.conv_general_dilated`'s signature, for `flax.linen.Conv`'s
  `conv_general_dilated` field (the parameters keep their names and shapes).

  'reference' is `lax.conv_general_dilated` itself (every argument passed on). 'cpu' takes the
  convolutions AlexNet has (NHWC/HWIO, square stride, explicit or 'VALID' padding, no dilation,
  no feature groups) and refuses others."""
  if _check(impl) == 'reference':
    return lax.conv_general_dilated

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
      raise ValueError("alexnet_jax's 'cpu' convolution supports NHWC/HWIO convolutions with a "
                       "square stride, explicit or 'VALID' padding, no dilation and no feature "
                       'groups.')
    return conv2d(lhs, rhs, window_strides[0], padding, 'cpu')

  return conv_general_dilated


# --- Local response normalisation (docs/alexnet2012.md, sec. 3.3) --------------------------------------


def _window_sum(v: Array, n: int) -> Array:
  """sum_{|j - i| <= n/2} v_j over the last axis, zero beyond its edges (the channels of one
  tower): 2 * (n // 2) + 1 shifted slices, n of them for the paper's odd n."""
  c, h = v.shape[-1], n // 2
  padded = jnp.pad(v, ((0, 0),) * (v.ndim - 1) + ((h, h),))
  return functools.reduce(jnp.add, [padded[..., i:i + c] for i in range(2 * h + 1)])


def _lrn_reference(x: Array, k: float, n: int, alpha: float, beta: float) -> Array:
  a = x.astype(jnp.float32)
  return (a / (k + alpha * _window_sum(a * a, n)) ** beta).astype(x.dtype)


def _power(t: Array, exponent: float) -> Array:
  """t ** exponent; the paper's -0.75 as rsqrt(t) * sqrt(rsqrt(t)), cheaper on CPU than the exp
  and log of a general power."""
  if exponent == -0.75:
    r = lax.rsqrt(t)
    return r * jnp.sqrt(r)
  return jnp.power(t, exponent)


def _lrn_terms(a: Array, k: float, n: int, alpha: float, beta: float) -> tuple[Array, Array]:
  t = k + alpha * _window_sum(a * a, n)
  return t, _power(t, -beta)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _lrn_cpu(x: Array, k: float, n: int, alpha: float, beta: float) -> Array:
  a = x.astype(jnp.float32)
  return (a * _lrn_terms(a, k, n, alpha, beta)[1]).astype(x.dtype)


def _lrn_cpu_fwd(x, k, n, alpha, beta):
  a = x.astype(jnp.float32)
  t, u = _lrn_terms(a, k, n, alpha, beta)
  a, t, u = lax.optimization_barrier((a, t, u))
  return (a * u).astype(x.dtype), (a, t, u, jnp.zeros((), x.dtype))


def _lrn_cpu_bwd(k, n, alpha, beta, residuals, g):
  # b_i = a_i u_i, u_i = t_i^-beta, t_i = k + alpha sum_{j near i} a_j^2, so
  # db_i/da_m = [i == m] u_i - 2 alpha beta a_i a_m u_i / t_i for m near i: the window is
  # symmetric, so dL/da_m = g_m u_m - 2 alpha beta a_m sum_{i near m} g_i a_i u_i / t_i.
  a, t, u, like = residuals
  g = lax.optimization_barrier(g).astype(jnp.float32)
  da = g * u - (2.0 * alpha * beta) * a * _window_sum(g * a * u / t, n)
  return (da.astype(like.dtype),)


_lrn_cpu.defvjp(_lrn_cpu_fwd, _lrn_cpu_bwd)


def local_response_norm(x: Array, k: float, n: int, alpha: float, beta: float,
                        impl: str) -> Array:
  """b_i = a_i / (k + alpha * sum_{|j - i| <= n/2} a_j^2)^beta over the last axis of `x`, the
  sum clipped at that axis's edges (`x` holds one tower's channels, so the window stops at the
  tower's edges).

  Computed in float32 whatever the input dtype (bfloat16 squares summed in bfloat16 lose the
  digits the normalisation needs); only the result is cast back. 'cpu': a custom VJP with
  materialised terms and a one-pass backward (module docstring)."""
  args = (float(k), int(n), float(alpha), float(beta))
  if _check(impl) == 'cpu':
    return _lrn_cpu(x, *args)
  return _lrn_reference(x, *args)


# --- Max pooling (docs/alexnet2012.md, sec. 3.4) -------------------------------------------------------


def _max_pool_reference(x: Array, window: int, stride: int) -> Array:
  # A Python -inf (not an array) as the initial value, so that JAX sees the max monoid and
  # uses its differentiable `reduce_window_max` (a first-maximum select-and-scatter gradient).
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                           'VALID')


def _pool_views(x: Array, window: int, stride: int) -> list[Array]:
  """The window x window strided views whose elementwise maximum is the pooled map."""
  out_h = (x.shape[1] - window) // stride + 1
  out_w = (x.shape[2] - window) // stride + 1
  return [x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
          for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_cpu(x: Array, window: int, stride: int) -> Array:
  return functools.reduce(jnp.maximum, _pool_views(x, window, stride))


def _max_pool_cpu_fwd(x, window, stride):
  y = functools.reduce(jnp.maximum, _pool_views(x, window, stride))
  x, y = lax.optimization_barrier((x, y))
  return y, (x, y)


def _max_pool_cpu_bwd(window, stride, residuals, g):
  """Each output's gradient goes to the first input of its window (row-major) that holds the
  maximum, as `lax.reduce_window`'s gradient does (a plain `jnp.maximum` chain would split ties).

  Input pixel (s*a + p, s*b + q) is phase (p, q) of the stride, and view (i, j) of the pool
  reads phase (i % s, j % s) shifted by (i // s, j // s): each phase's gradient is a sum of
  shifted (not strided) copies of the output gradient, one fused pass per phase, and one
  transpose interleaves the s*s phases into the input's layout.
  """
  x, y = residuals
  g = lax.optimization_barrier(g)
  batch, height, width, channels = x.shape
  out_h, out_w = y.shape[1:3]
  phase_h, phase_w = -(-height // stride), -(-width // stride)
  claimed = jnp.zeros(y.shape, bool)
  phases = {}
  for view_index, view in enumerate(_pool_views(x, window, stride)):
    (di, p), (dj, q) = (divmod(v, stride) for v in divmod(view_index, window))
    hit = (view == y) & ~claimed
    claimed = claimed | hit
    term = jnp.pad(jnp.where(hit, g, 0),
                   ((0, 0), (di, phase_h - di - out_h), (dj, phase_w - dj - out_w), (0, 0)))
    phases[p, q] = phases[p, q] + term if (p, q) in phases else term
  zeros = jnp.zeros((batch, phase_h, phase_w, channels), g.dtype)
  grid = jnp.stack([jnp.stack([phases.get((p, q), zeros) for q in range(stride)])
                    for p in range(stride)])  # [p, q, batch, phase_h, phase_w, channels]
  dx = grid.transpose(2, 3, 0, 4, 1, 5).reshape(batch, phase_h * stride, phase_w * stride,
                                                channels)
  return (dx[:, :height, :width],)


_max_pool_cpu.defvjp(_max_pool_cpu_fwd, _max_pool_cpu_bwd)


def max_pool(x: Array, window: int, stride: int, impl: str) -> Array:
  """Max pooling of an NHWC map, window x window every `stride` pixels, no padding (the
  paper's overlapping 3 / 2, or a non-overlapping 2 / 2). 'reference': `lax.reduce_window`;
  'cpu': the elementwise maximum of the window's strided views, with a custom VJP (module
  docstring). The same values, and the same gradient, ties included."""
  window, stride = int(window), int(stride)
  if _check(impl) == 'cpu':
    return _max_pool_cpu(x, window, stride)
  return _max_pool_reference(x, window, stride)
