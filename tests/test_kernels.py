"""kernels.py's hand-written gradients against independent computations: NumPy sums written from the
definitions, and JAX's automatic differentiation of the plain formulas (lax.conv, a banded LRN,
lax.reduce_window)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.core import kernels

HIGHEST = jax.lax.Precision.HIGHEST


def plain_conv(x, w, stride, padding):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision=HIGHEST)


def numpy_kernel_grad(x, dy, kernel_shape, stride, padding):
  """dW[i, j, c, o] = sum_{n, y, x} input[n, s*y + i, s*x + j, c] dY[n, y, x, o], in float64."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), padding[0], padding[1], (0, 0)))
  dy = np.asarray(dy, np.float64)
  kh, kw, _, _ = kernel_shape
  _, oh, ow, _ = dy.shape
  grad = np.zeros(kernel_shape)
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
      grad[i, j] = np.einsum('nyxc,nyxo->co', window, dy)
  return grad


# conv1-like (stride 4, 11 x 11, 3 channels) with the padding that gives ceil, with none, and
# with rows the convolution never reads ((22 - 11) % 4 = 3); conv2-conv5-like stride-1 layers;
# a stride 2 that does not divide the kernel.
CASES = [
    ((2, 15, 15, 3), (11, 11, 3, 8), 4, ((0, 3), (0, 3))),
    ((2, 23, 23, 3), (11, 11, 3, 8), 4, ((0, 0), (0, 0))),
    ((2, 22, 21, 3), (11, 11, 3, 8), 4, ((0, 0), (0, 0))),
    ((3, 9, 9, 6), (5, 5, 6, 10), 1, ((2, 2), (2, 2))),
    ((3, 7, 7, 12), (3, 3, 12, 8), 1, ((1, 1), (1, 1))),
    ((2, 10, 9, 4), (3, 3, 4, 5), 2, ((1, 0), (0, 1))),
]


@pytest.mark.parametrize('x_shape,w_shape,stride,padding', CASES)
def test_kernel_grad_by_offsets_equals_the_definition_and_xla(x_shape, w_shape, stride, padding):
  x = jax.random.normal(jax.random.key(0), x_shape)
  w = jax.random.normal(jax.random.key(1), w_shape)
  dy = jax.random.normal(jax.random.key(2), plain_conv(x, w, stride, padding).shape)
  want = numpy_kernel_grad(x, dy, w_shape, stride, padding)
  got = np.asarray(jax.jit(kernels.kernel_grad_by_offsets, static_argnums=(2, 3, 4))(
      x, dy, w_shape, stride, padding))
  assert got.shape == w_shape
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  xla = jax.vjp(lambda w_: plain_conv(x, w_, stride, padding), w)[1](dy)[0]
  np.testing.assert_allclose(got, np.asarray(xla), rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize('x_shape,w_shape,stride,padding', CASES[::2])
@pytest.mark.parametrize('weight_grad', ['offsets', 'xla', 'auto'])
def test_conv2d_value_and_both_gradients_match_the_plain_convolution(x_shape, w_shape, stride,
                                                                       padding, weight_grad):
  x = jax.random.normal(jax.random.key(0), x_shape)
  w = jax.random.normal(jax.random.key(1), w_shape)
  r = jax.random.normal(jax.random.key(2), plain_conv(x, w, stride, padding).shape)
  loss = lambda conv, x_, w_: jnp.sum(conv(x_, w_) * r)
  ours = functools.partial(kernels.conv2d, stride=stride, padding=padding, weight_grad=weight_grad)
  plain = functools.partial(plain_conv, stride=stride, padding=padding)
  np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-5, atol=1e-4)
  got = jax.jit(jax.grad(functools.partial(loss, ours), argnums=(0, 1)))(x, w)
  want = jax.grad(functools.partial(loss, plain), argnums=(0, 1))(x, w)
  for g, v in zip(got, want):
    np.testing.assert_allclose(g, v, rtol=1e-4, atol=1e-4 * np.abs(np.asarray(v)).max())


def test_auto_takes_the_offsets_on_cpu_and_xla_keeps_its_own():
  assert jax.default_backend() == 'cpu'
  x, w = jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 4))

  def loops_over_offsets(weight_grad):  # the offsets' loop is a scan in the backward pass
    grad = jax.grad(lambda w_: kernels.conv2d(x, w_, 1, ((1, 1), (1, 1)), weight_grad).sum())
    return 'scan' in str(jax.make_jaxpr(grad)(w))

  assert loops_over_offsets('auto') and loops_over_offsets('offsets')
  assert not loops_over_offsets('xla')
  with pytest.raises(ValueError, match="weight_grad='cudnn'.*'offsets'"):
    kernels.uses_offsets('cudnn')


def test_flax_conv_keeps_its_parameters_and_refuses_what_it_cannot_do():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  ours = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)),
                 conv_general_dilated=kernels.flax_conv_general_dilated('offsets'))
  plain = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
  params = plain.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
      jnp.shape, params)
  np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-5)
  dilated = nn.Conv(4, (3, 3), kernel_dilation=2,
                    conv_general_dilated=kernels.flax_conv_general_dilated('offsets'))
  with pytest.raises(ValueError, match='no dilation'):
    dilated.init(jax.random.key(1), x)


# --- LRN -----------------------------------------------------------------------------------------


def banded_lrn(a, k, n, alpha, beta):
  """The formula with the window sum as a product with a 0/1 band matrix (plain autodiff)."""
  c = a.shape[-1]
  idx = jnp.arange(c)
  band = (jnp.abs(idx[:, None] - idx[None, :]) <= n // 2).astype(jnp.float32)
  a = a.astype(jnp.float32)
  return a * (k + alpha * jnp.einsum('...c,cd->...d', a * a, band, precision=HIGHEST)) ** -beta


@pytest.mark.parametrize('k,n,alpha,beta', [(2.0, 5, 1e-4, 0.75), (1.0, 3, 1e-3, 0.5)])
def test_lrn_value_and_gradient_match_the_banded_formula(k, n, alpha, beta):
  # Large activations so that the normalisation, and its gradient term, matter.
  a = jax.random.normal(jax.random.key(0), (2, 5, 5, 16)) * 60.0
  g = jax.random.normal(jax.random.key(1), a.shape)
  ours = lambda x: kernels.local_response_norm(x, k, n, alpha, beta)
  plain = lambda x: banded_lrn(x, k, n, alpha, beta)
  np.testing.assert_allclose(ours(a), plain(a), rtol=1e-5)
  got = jax.jit(lambda x: jax.vjp(ours, x)[1](g)[0])(a)
  want = jax.vjp(plain, a)[1](g)[0]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(np.asarray(want)).max())
  # The cross-channel term (a neighbour's activation in the denominator) is far from
  # negligible here, so a gradient that dropped it would fail.
  diagonal_only = np.asarray(g * plain(a) / a)
  assert np.abs(np.asarray(want) - diagonal_only).max() > 0.01 * np.abs(np.asarray(want)).max()


def test_lrn_in_bfloat16_computes_in_float32_and_returns_bfloat16():
  a = (jax.random.normal(jax.random.key(0), (2, 3, 3, 8)) * 30).astype(jnp.bfloat16)
  out = kernels.local_response_norm(a, 2.0, 5, 1e-4, 0.75)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             banded_lrn(a.astype(jnp.float32), 2.0, 5, 1e-4, 0.75), rtol=1e-2)
  grad = jax.grad(lambda x: kernels.local_response_norm(x, 2.0, 5, 1e-4, 0.75).astype(
      jnp.float32).sum())(a)
  assert grad.dtype == jnp.bfloat16


# --- Max pooling ---------------------------------------------------------------------------------


def window_pool(x, window, stride):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), 'VALID')


@pytest.mark.parametrize('shape,window,stride', [
    ((2, 55, 55, 4), 3, 2), ((2, 13, 13, 3), 3, 2), ((2, 14, 15, 3), 3, 2),
    ((2, 27, 27, 2), 2, 2), ((1, 9, 8, 2), 3, 1), ((1, 10, 10, 2), 3, 3)])
def test_max_pool_value_and_gradient_match_reduce_window(shape, window, stride):
  x = jax.random.normal(jax.random.key(0), shape)  # no ties
  y = kernels.max_pool(x, window, stride)
  np.testing.assert_array_equal(y, window_pool(x, window, stride))
  g = jax.random.normal(jax.random.key(1), y.shape)
  got = jax.jit(lambda x_: jax.vjp(lambda v: kernels.max_pool(v, window, stride), x_)[1](g)[0])(x)
  want = jax.vjp(lambda v: window_pool(v, window, stride), x)[1](g)[0]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_max_pool_training_forward_matches_reduce_window_with_ties_and_nan():
  """The forward pass under differentiation (the custom VJP's forward rule, not the primal that
  the plain value test runs) gives reduce_window's values: ties from rounding and ReLU zeros,
  and a NaN that propagates as jnp.maximum's does; the gradients match where there is no NaN."""
  x = jnp.round(jax.random.normal(jax.random.key(2), (2, 27, 27, 3)) * 2) / 2
  x = jax.nn.relu(x)  # many tied zeros
  y, vjp = jax.vjp(lambda v: kernels.max_pool(v, 3, 2), x)
  np.testing.assert_array_equal(y, window_pool(x, 3, 2))
  g = jax.random.normal(jax.random.key(3), y.shape)
  want = jax.vjp(lambda v: window_pool(v, 3, 2), x)[1](g)[0]
  np.testing.assert_allclose(vjp(g)[0], want, rtol=1e-6, atol=1e-6)
  with_nan = x.at[0, 5, 6, 1].set(jnp.nan)
  y_nan = jax.vjp(lambda v: kernels.max_pool(v, 3, 2), with_nan)[0]
  np.testing.assert_array_equal(np.isnan(y_nan), np.isnan(window_pool(with_nan, 3, 2)))
  assert np.isnan(y_nan).sum() == 2  # pixel (5, 6): row 5 in one window, column 6 in two


def test_max_pool_gives_a_tied_window_gradient_to_its_first_maximum_only():
  """All-equal input (a ReLU's zeros): each output's gradient lands on its window's top-left
  input, once, so overlapping windows add up where they share that pixel."""
  x = jnp.zeros((1, 7, 7, 1))
  g = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
  got = np.asarray(jax.grad(lambda v: jnp.sum(kernels.max_pool(v, 3, 2) * g))(x))[0, :, :, 0]
  want = np.zeros((7, 7))
  for a in range(3):
    for b in range(3):
      want[2 * a, 2 * b] += float(g[0, a, b, 0])
  np.testing.assert_array_equal(got, want)
