"""The update rule of section 5, step by step, against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax.core import optimizer


def numpy_paper_rule(w, v, g, eps, decay=5e-4, momentum=0.9, is_bias=False):
  """v <- 0.9 v - 0.0005 eps w - eps g;  w <- w + v  (no decay on biases)."""
  d = 0.0 if is_bias else decay
  v = momentum * v - d * eps * w - eps * g
  return w + v, v


def test_three_steps_with_a_learning_rate_drop_match_numpy():
  rng = np.random.default_rng(0)
  params = {'fc6': {'kernel': rng.normal(size=(4, 3)).astype(np.float32),
                    'bias': rng.normal(size=(3,)).astype(np.float32)}}
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
           for _ in range(3)]
  rates = [0.01, 0.01, 0.001]  # divided by 10 between steps 2 and 3

  tx = optimizer.paper_sgd(learning_rate=rates[0])
  state = tx.init(params)
  p = jax.tree.map(jnp.asarray, params)
  w = {k: params['fc6'][k].astype(np.float64) for k in ('kernel', 'bias')}
  v = {k: np.zeros_like(w[k]) for k in w}
  for g, eps in zip(grads, rates):
    state = optimizer.set_learning_rate(state, eps)
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
    for k in w:
      w[k], v[k] = numpy_paper_rule(w[k], v[k], g['fc6'][k], eps, is_bias=(k == 'bias'))
    for k in w:
      np.testing.assert_allclose(np.asarray(p['fc6'][k]), w[k], rtol=1e-6, atol=1e-7)
  assert float(optimizer.learning_rate(state)) == np.float32(0.001)


def test_velocity_is_not_rescaled_by_a_learning_rate_drop():
  """optax.sgd (rate after momentum) would shrink the old velocity 10x; the paper's rule not."""
  params = {'w': {'kernel': jnp.zeros((2,))}}
  g = {'w': {'kernel': jnp.ones((2,))}}
  zero = {'w': {'kernel': jnp.zeros((2,))}}
  tx = optimizer.paper_sgd(learning_rate=0.1, weight_decay=0.0)
  state = tx.init(params)
  _, state = tx.update(g, state, params)  # v = -0.1
  state = optimizer.set_learning_rate(state, 0.01)
  updates, _ = tx.update(zero, state, params)  # v = 0.9 * -0.1, whatever the new rate
  np.testing.assert_allclose(np.asarray(updates['w']['kernel']), -0.09, rtol=1e-6)

  sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
  s = sgd.init(params)
  _, s = sgd.update(g, s, params)
  s.hyperparams['learning_rate'] = jnp.asarray(0.01)
  u, _ = sgd.update(zero, s, params)
  assert not np.allclose(np.asarray(u['w']['kernel']), -0.09)  # the difference is real


def test_decay_mask_exempts_biases_only():
  mask = optimizer.decay_mask({'conv1': {'kernel': 0, 'bias': 0}, 'fc8': {'kernel': 0, 'bias': 0}})
  assert mask == {'conv1': {'kernel': True, 'bias': False}, 'fc8': {'kernel': True, 'bias': False}}
