"""kernels.py's two implementations of every op, 'reference' (the formulas, differentiated by JAX)
and 'cpu' (hand-written gradients), against each other and against independent computations:
NumPy sums and loops written from the definitions (float64), and JAX's automatic
differentiation of the plain formulas written differently (lax.conv at HIGHEST precision, a
banded LRN, lax.reduce_window)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.core import kernels
import tolerance  # tests/ is on sys.path under pytest

HIGHEST = jax.lax.Precision.HIGHEST
IMPLS = ('reference', 'cpu')


def test_the_public_choices():
  assert kernels.KERNEL_CHOICES == ('auto', 'reference', 'cpu')
  assert kernels.IMPLS == IMPLS


@pytest.mark.parametrize('platform,want', [('cpu', 'cpu'), ('gpu', 'reference'),
                                           ('cuda', 'reference'), ('rocm', 'reference'),
                                           ('tpu', 'reference')])
def test_resolve_takes_the_cpu_kernels_on_cpu_only_and_passes_explicit_choices(platform, want):
  assert kernels.resolve('auto', platform) == want
  assert kernels.resolve('reference', platform) == 'reference'
  assert kernels.resolve('cpu', platform) == 'cpu'
  with pytest.raises(ValueError, match=r"config\.model\.kernels='offsets'.*'auto', 'reference', "
                                       r"'cpu'"):
    kernels.resolve('offsets', platform)


def test_every_op_refuses_an_unresolved_choice():
  x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  calls = [lambda impl: kernels.conv2d(x, w, 1, ((1, 1), (1, 1)), impl),
           lambda impl: kernels.local_response_norm(x, 2.0, 5, 1e-4, 0.75, impl),
           lambda impl: kernels.max_pool(x, 3, 2, impl),
           kernels.flax_conv_general_dilated]
  for call in calls:
    for impl in ('auto', 'xla', 'offsets'):
      with pytest.raises(ValueError, match=rf"impl='{impl}'.*'reference', 'cpu'.*resolve"):
        call(impl)


# --- Convolution ---------------------------------------------------------------------------------


def plain_conv(x, w, stride, padding):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      precision=HIGHEST)


def numpy_conv(x, w, stride, padding):
  """y[n, y, x, o] = sum_{i, j, c} input[n, s*y + i, s*x + j, c] w[i, j, c, o], in float64."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), padding[0], padding[1], (0, 0)))
  w = np.asarray(w, np.float64)
  kh, kw, _, _ = w.shape
  oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = 0.0
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
      out = out + np.einsum('nyxc,co->nyxo', window, w[i, j])
  return out


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


# conv1-like (stride 4, 11 x 11, 3 channels): with conv1's own padding (model.conv1_padding(32) =
# 3: 7 x 7 out, as a 224 crop's 3 gives 55 x 55), with padding that gives ceil, with none, and
# with rows the convolution never reads ((22 - 11) % 4 = 3); conv2-conv5-like stride-1 layers
# with their padding; a stride 2 that does not divide the kernel.
CASES = [
    ((2, 32, 32, 3), (11, 11, 3, 8), 4, ((0, 3), (0, 3))),
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


@pytest.mark.parametrize('x_shape,w_shape,stride,padding', CASES)
def test_conv2d_value_and_both_gradients_match_the_definition_in_both_impls(x_shape, w_shape,
                                                                             stride, padding):
  x = jax.random.normal(jax.random.key(0), x_shape)
  w = jax.random.normal(jax.random.key(1), w_shape)
  r = jax.random.normal(jax.random.key(2), plain_conv(x, w, stride, padding).shape)
  loss = lambda conv, x_, w_: jnp.sum(conv(x_, w_) * r)
  plain = functools.partial(plain_conv, stride=stride, padding=padding)
  want_grads = jax.grad(functools.partial(loss, plain), argnums=(0, 1))(x, w)
  want_value = numpy_conv(x, w, stride, padding)
  np.testing.assert_allclose(want_grads[1], numpy_kernel_grad(x, r, w_shape, stride, padding),
                             rtol=1e-4, atol=1e-4 * np.abs(np.asarray(want_grads[1])).max())
  results = {}
  for impl in IMPLS:
    ours = functools.partial(kernels.conv2d, stride=stride, padding=padding, impl=impl)
    value = ours(x, w)
    np.testing.assert_allclose(value, want_value, rtol=1e-4, atol=1e-4 * np.abs(want_value).max())
    np.testing.assert_allclose(value, plain(x, w), rtol=1e-5, atol=1e-4)
    grads = jax.jit(jax.grad(functools.partial(loss, ours), argnums=(0, 1)))(x, w)
    for g, v in zip(grads, want_grads):
      np.testing.assert_allclose(g, v, rtol=1e-4, atol=1e-4 * np.abs(np.asarray(v)).max())
    results[impl] = (value,) + tuple(grads)
  for got, want in zip(results['cpu'], results['reference']):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(np.asarray(want)).max())


def test_conv2d_in_bfloat16_agrees_across_impls():
  """conv1 in bfloat16 (as the model computes with `dtype: bfloat16`): the cpu kernel gradient
  (bfloat16 products per offset) is the reference's to bfloat16 rounding."""
  x_shape, w_shape, stride, padding = CASES[0]
  x = jax.random.normal(jax.random.key(0), x_shape).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), w_shape).astype(jnp.bfloat16)
  r = jax.random.normal(jax.random.key(2), plain_conv(x, w, stride, padding).shape)
  want_w = numpy_kernel_grad(np.asarray(x, np.float32), r.astype(jnp.bfloat16).astype(np.float32),
                             w_shape, stride, padding)
  for impl in IMPLS:
    conv = lambda x_, w_: kernels.conv2d(x_, w_, stride, padding, impl)
    grads = jax.jit(jax.grad(lambda x_, w_: jnp.sum(conv(x_, w_).astype(jnp.float32) * r),
                             argnums=(0, 1)))(x, w)
    assert grads[0].dtype == grads[1].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(grads[1], np.float32), want_w, rtol=3e-2,
                               atol=3e-2 * np.abs(want_w).max())


def test_cpu_conv_loops_over_offsets_and_reference_keeps_xlas_gradient():
  x, w = jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 4))

  def loops_over_offsets(impl):  # the offsets' loop is a scan in the backward pass
    grad = jax.grad(lambda w_: kernels.conv2d(x, w_, 1, ((1, 1), (1, 1)), impl).sum())
    return 'scan' in str(jax.make_jaxpr(grad)(w))

  assert loops_over_offsets('cpu')
  assert not loops_over_offsets('reference')


@pytest.mark.parametrize('impl', IMPLS)
def test_flax_conv_keeps_its_parameters_and_values(impl):
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  ours = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)),
                 conv_general_dilated=kernels.flax_conv_general_dilated(impl))
  plain = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
  params = plain.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(
      jnp.shape, params)
  np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-5)
  strided = dict(features=4, kernel_size=(3, 3), strides=(2, 2), padding='VALID')
  np.testing.assert_allclose(
      nn.Conv(**strided, conv_general_dilated=kernels.flax_conv_general_dilated(impl)).apply(
          params, x), nn.Conv(**strided).apply(params, x), rtol=1e-5, atol=1e-5)


def test_flax_conv_cpu_refuses_what_it_cannot_do_and_reference_does_anything_lax_does():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  dilated = lambda impl: nn.Conv(4, (3, 3), kernel_dilation=2,
                                 conv_general_dilated=kernels.flax_conv_general_dilated(impl))
  with pytest.raises(ValueError, match='no dilation'):
    dilated('cpu').init(jax.random.key(1), x)
  params = nn.Conv(4, (3, 3), kernel_dilation=2).init(jax.random.key(1), x)
  np.testing.assert_allclose(dilated('reference').apply(params, x),
                             nn.Conv(4, (3, 3), kernel_dilation=2).apply(params, x),
                             rtol=1e-6, atol=1e-6)


# --- LRN -----------------------------------------------------------------------------------------


def numpy_lrn(a, k, n, alpha, beta):
  """The paper's formula (section 3.3) in float64, the sum clipped at the channel edges."""
  a = np.asarray(a, np.float64)
  num = a.shape[-1]
  out = np.empty_like(a)
  for i in range(num):
    lo, hi = max(0, i - n // 2), min(num - 1, i + n // 2)
    out[..., i] = a[..., i] / (k + alpha * np.sum(a[..., lo:hi + 1] ** 2, axis=-1)) ** beta
  return out


def banded_lrn(a, k, n, alpha, beta):
  """The formula with the window sum as a product with a 0/1 band matrix (plain autodiff)."""
  c = a.shape[-1]
  idx = jnp.arange(c)
  band = (jnp.abs(idx[:, None] - idx[None, :]) <= n // 2).astype(jnp.float32)
  a = a.astype(jnp.float32)
  return a * (k + alpha * jnp.einsum('...c,cd->...d', a * a, band, precision=HIGHEST)) ** -beta


# The paper's constants; others; an even n (the paper's sum runs over i - n/2 .. i + n/2).
LRN_CONSTANTS = [(2.0, 5, 1e-4, 0.75), (1.0, 3, 1e-3, 0.5), (1.0, 4, 1e-3, 0.75)]


@pytest.mark.parametrize('k,n,alpha,beta', LRN_CONSTANTS)
def test_lrn_value_and_gradient_match_the_formula_in_both_impls(k, n, alpha, beta):
  # Large activations so that the normalisation, and its gradient term, matter.
  a = jax.random.normal(jax.random.key(0), (2, 5, 5, 16)) * 60.0
  g = jax.random.normal(jax.random.key(1), a.shape)
  plain = lambda x: banded_lrn(x, k, n, alpha, beta)
  want = jax.vjp(plain, a)[1](g)[0]
  np.testing.assert_allclose(plain(a), numpy_lrn(a, k, n, alpha, beta), rtol=1e-5)
  results = {}
  for impl in IMPLS:
    ours = lambda x: kernels.local_response_norm(x, k, n, alpha, beta, impl)
    value = ours(a)
    np.testing.assert_allclose(value, numpy_lrn(a, k, n, alpha, beta), rtol=1e-5)
    np.testing.assert_allclose(value, plain(a), rtol=1e-5)
    got = jax.jit(lambda x: jax.vjp(ours, x)[1](g)[0])(a)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(np.asarray(want)).max())
    results[impl] = (value, got)
  for got, ref in zip(results['cpu'], results['reference']):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(np.asarray(ref)).max())
  # The cross-channel term (a neighbour's activation in the denominator) is far from
  # negligible here, so a gradient that dropped it would fail.
  diagonal_only = np.asarray(g * plain(a) / a)
  assert np.abs(np.asarray(want) - diagonal_only).max() > 0.01 * np.abs(np.asarray(want)).max()


def test_lrn_window_stops_at_the_channel_edges():
  """Channel 0 sums over channels 0-2 only (a tower's edge, n = 5), by hand."""
  a = jax.random.normal(jax.random.key(0), (2, 3, 3, 8)) * 60.0
  s0 = np.sum(np.asarray(a[..., 0:3], np.float64) ** 2, axis=-1)
  for impl in IMPLS:
    got = np.asarray(kernels.local_response_norm(a, 2.0, 5, 1e-4, 0.75, impl))
    np.testing.assert_allclose(got[..., 0], np.asarray(a[..., 0]) / (2 + 1e-4 * s0) ** 0.75,
                               rtol=1e-5)


@pytest.mark.parametrize('impl', IMPLS)
def test_lrn_in_bfloat16_computes_in_float32_and_returns_bfloat16(impl):
  a = (jax.random.normal(jax.random.key(0), (2, 3, 3, 8)) * 30).astype(jnp.bfloat16)
  lrn = lambda x: kernels.local_response_norm(x, 2.0, 5, 1e-4, 0.75, impl)
  out = lrn(a)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             banded_lrn(a.astype(jnp.float32), 2.0, 5, 1e-4, 0.75), rtol=1e-2)
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             numpy_lrn(np.asarray(a, np.float32), 2.0, 5, 1e-4, 0.75), rtol=1e-2)
  g = jax.random.normal(jax.random.key(1), a.shape).astype(jnp.bfloat16)
  grad = jax.vjp(lrn, a)[1](g)[0]
  assert grad.dtype == jnp.bfloat16
  want = jax.vjp(lambda x: banded_lrn(x, 2.0, 5, 1e-4, 0.75), a.astype(jnp.float32))[1](
      g.astype(jnp.float32))[0]
  np.testing.assert_allclose(np.asarray(grad, np.float32), want, rtol=1e-2,
                             atol=1e-2 * np.abs(np.asarray(want)).max())


def test_lrn_in_bfloat16_agrees_across_impls():
  a = (jax.random.normal(jax.random.key(0), (2, 4, 4, 16)) * 40).astype(jnp.bfloat16)
  g = jax.random.normal(jax.random.key(1), a.shape).astype(jnp.bfloat16)
  out = {}
  for impl in IMPLS:
    y, vjp = jax.vjp(lambda x: kernels.local_response_norm(x, 2.0, 5, 1e-4, 0.75, impl), a)
    out[impl] = (np.asarray(y, np.float32), np.asarray(vjp(g)[0], np.float32))
  for got, want in zip(out['cpu'], out['reference']):
    np.testing.assert_allclose(got, want, rtol=2 ** -7, atol=2 ** -7 * np.abs(want).max())


# --- Max pooling ---------------------------------------------------------------------------------


def window_pool(x, window, stride):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), 'VALID')


def numpy_max_pool(x, window, stride, g):
  """The pooled map, and the input gradient with each output's gradient on the FIRST maximum of
  its window (row-major), from loops over the windows in float64."""
  x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
  batch, height, width, channels = x.shape
  out_h, out_w = (height - window) // stride + 1, (width - window) // stride + 1
  y, dx = np.empty((batch, out_h, out_w, channels)), np.zeros_like(x)
  n, c = np.meshgrid(np.arange(batch), np.arange(channels), indexing='ij')
  for a in range(out_h):
    for b in range(out_w):
      view = x[:, stride * a:stride * a + window, stride * b:stride * b + window]
      view = view.transpose(0, 3, 1, 2).reshape(batch, channels, window * window)
      y[:, a, b] = view.max(-1)
      i, j = np.divmod(view.argmax(-1), window)
      np.add.at(dx, (n, stride * a + i, stride * b + j, c), g[:, a, b])
  return y, dx


def pool_grad_atol(g, window, stride):
  """An input's gradient sums the output gradients of the windows that take it as their maximum,
  in an order of each implementation's own: ceil(window / stride) windows overlap along each
  axis, so up to the square of that many terms, each at most max |g|."""
  terms = (-(-window // stride)) ** 2
  return tolerance.float32_atol(terms * np.abs(np.asarray(g)).max(), terms)


POOLS = [((2, 55, 55, 4), 3, 2), ((2, 13, 13, 3), 3, 2), ((2, 14, 15, 3), 3, 2),
         ((2, 27, 27, 2), 2, 2), ((1, 9, 8, 2), 3, 1), ((1, 10, 10, 2), 3, 3)]


@pytest.mark.parametrize('shape,window,stride', POOLS)
def test_max_pool_value_and_gradient_match_the_definition_in_both_impls(shape, window, stride):
  x = jax.random.normal(jax.random.key(0), shape)  # no ties
  g = jax.random.normal(jax.random.key(1), window_pool(x, window, stride).shape)
  want_y, want_dx = numpy_max_pool(x, window, stride, g)
  atol = pool_grad_atol(g, window, stride)
  results = {}
  for impl in IMPLS:
    pool = lambda v: kernels.max_pool(v, window, stride, impl)
    y = pool(x)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(y, window_pool(x, window, stride))
    got = jax.jit(lambda x_: jax.vjp(pool, x_)[1](g)[0])(x)
    np.testing.assert_allclose(got, want_dx, rtol=0, atol=atol)
    want = jax.vjp(lambda v: window_pool(v, window, stride), x)[1](g)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    results[impl] = (y, got)
  np.testing.assert_array_equal(results['cpu'][0], results['reference'][0])
  # The same terms, added in a different order where windows overlap.
  np.testing.assert_allclose(results['cpu'][1], results['reference'][1], rtol=0, atol=atol)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('window,stride', [(3, 2), (2, 2)])
def test_max_pool_training_forward_and_gradient_with_ties(impl, window, stride):
  """The forward pass under differentiation (for 'cpu' the custom VJP's forward rule, not the
  primal that the plain value test runs) gives reduce_window's values with ties from rounding
  and ReLU zeros, and the gradients go to each window's first maximum (NumPy), as
  reduce_window's do."""
  pool = lambda v: kernels.max_pool(v, window, stride, impl)
  x = jnp.round(jax.random.normal(jax.random.key(2), (2, 27, 27, 3)) * 2) / 2
  x = jax.nn.relu(x)  # many tied zeros
  y, vjp = jax.vjp(pool, x)
  np.testing.assert_array_equal(y, window_pool(x, window, stride))
  g = jax.random.normal(jax.random.key(3), y.shape)
  want_y, want_dx = numpy_max_pool(x, window, stride, g)
  np.testing.assert_array_equal(y, want_y)
  atol = pool_grad_atol(g, window, stride)
  np.testing.assert_allclose(vjp(g)[0], want_dx, rtol=0, atol=atol)
  want = jax.vjp(lambda v: window_pool(v, window, stride), x)[1](g)[0]
  np.testing.assert_allclose(vjp(g)[0], want, rtol=0, atol=atol)


def test_max_pool_propagates_a_nan():
  """A NaN input reaches the output of every window that holds it in the cpu pool (as
  jnp.maximum and np.max propagate it). The reference's reduce_window does so for the paper's
  3 / 2 pool on XLA:CPU, but not reliably: there a 2 x 2 window [[0, 0], [nan, 1.5]] gives
  1.5, so the 2 / 2 case is asserted for the cpu kernels only."""
  x = jax.nn.relu(jnp.round(jax.random.normal(jax.random.key(2), (2, 27, 27, 3)) * 2) / 2)
  with_nan = x.at[0, 5, 6, 1].set(jnp.nan)
  for impl in IMPLS:
    y_nan = jax.vjp(lambda v: kernels.max_pool(v, 3, 2, impl), with_nan)[0]
    np.testing.assert_array_equal(np.isnan(y_nan), np.isnan(window_pool(with_nan, 3, 2)))
    assert np.isnan(y_nan).sum() == 2  # pixel (5, 6): row 5 in one window, column 6 in two
  for window, stride, nans in [(3, 2, 2), (2, 2, 1)]:  # 2 / 2: one window holds (5, 6)
    y_nan = jax.vjp(lambda v: kernels.max_pool(v, window, stride, 'cpu'), with_nan)[0]
    want = numpy_max_pool(with_nan, window, stride, np.zeros(y_nan.shape))[0]
    np.testing.assert_array_equal(np.isnan(y_nan), np.isnan(want))
    assert np.isnan(y_nan).sum() == nans


@pytest.mark.parametrize('impl', IMPLS)
def test_max_pool_gives_a_tied_window_gradient_to_its_first_maximum_only(impl):
  """All-equal input (a ReLU's zeros): each output's gradient lands on its window's top-left
  input, once, so overlapping windows add up where they share that pixel."""
  x = jnp.zeros((1, 7, 7, 1))
  g = jnp.arange(1.0, 10.0).reshape(1, 3, 3, 1)
  got = np.asarray(jax.grad(lambda v: jnp.sum(kernels.max_pool(v, 3, 2, impl) * g))(x))
  want = np.zeros((7, 7))
  for a in range(3):
    for b in range(3):
      want[2 * a, 2 * b] += float(g[0, a, b, 0])
  np.testing.assert_array_equal(got[0, :, :, 0], want)


def test_max_pool_in_bfloat16_agrees_across_impls():
  x = jnp.round(jax.random.normal(jax.random.key(4), (2, 13, 13, 4)) * 4).astype(jnp.bfloat16)
  g = jax.random.normal(jax.random.key(5), (2, 6, 6, 4)).astype(jnp.bfloat16)
  out = {}
  for impl in IMPLS:
    y, vjp = jax.vjp(lambda v: kernels.max_pool(v, 3, 2, impl), x)
    assert y.dtype == vjp(g)[0].dtype == jnp.bfloat16
    out[impl] = (y, vjp(g)[0])
  want_y, want_dx = numpy_max_pool(np.asarray(x, np.float32), 3, 2, np.asarray(g, np.float32))
  np.testing.assert_array_equal(np.asarray(out['cpu'][0], np.float32), want_y)
  # Overlapping windows add bfloat16 gradients, so compare at bfloat16's precision.
  np.testing.assert_allclose(np.asarray(out['cpu'][1], np.float32), want_dx, rtol=2 ** -7)
  np.testing.assert_array_equal(np.asarray(out['cpu'][0], np.float32),
                                np.asarray(out['reference'][0], np.float32))
  np.testing.assert_allclose(np.asarray(out['cpu'][1], np.float32),
                             np.asarray(out['reference'][1], np.float32), rtol=2 ** -7)


# --- Which implementation a compiled step contains ------------------------------------------------


def test_reference_lowering_has_no_barriers_and_pools_by_reduce_window():
  """A conv -> LRN -> pool step with its gradient, as it is compiled: the reference kernels are
  plain XLA ops (reduce_window, no optimization_barrier, no offsets loop); the cpu ones
  materialise their terms (optimization_barrier) and pool by strided views."""
  x = jax.random.normal(jax.random.key(0), (2, 11, 11, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 8))

  def lowered(impl):
    def loss(x_, w_):
      y = kernels.conv2d(x_, w_, 1, ((1, 1), (1, 1)), impl)
      y = kernels.local_response_norm(jax.nn.relu(y), 2.0, 5, 1e-4, 0.75, impl)
      return kernels.max_pool(y, 3, 2, impl).sum()
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, w).as_text()

  reference, cpu = lowered('reference'), lowered('cpu')
  assert 'optimization_barrier' not in reference
  assert 'reduce_window' in reference
  assert 'while' not in reference
  assert 'optimization_barrier' in cpu
  assert 'reduce_window' not in cpu
  assert 'while' in cpu  # the offsets' loop
