"""One training step and one evaluation step, as pure functions of their inputs.

The train step is the paper's SGD step on one global batch (forward through the strategy's
partitioned network, backward, the update rule of optimizer.py); the eval step sums loss and top-1
/ top-5 hits over a padded evaluation batch. Neither knows how devices are laid out: the strategy's
`forward` does, and run.py jits both with the run's shardings.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import optimizer as optimizer_lib
from alexnet_jax.core import strategies


@flax.struct.dataclass
class TrainState:
  """Everything the next step depends on."""
  step: jax.Array
  params: Any  # both towers stacked on a leading axis of size 2
  opt_state: Any
  rng: jax.Array  # dropout key; step i uses fold_in(rng, i)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example on the (possibly class-sharded) logits."""
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return -jnp.sum(one_hot * jax.nn.log_softmax(logits), axis=-1)


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the k largest logits. A class tied with the label counts as
  above it: a network that outputs the same logit for every class (fc8 at zero, at step 1) is
  right 0 times, not every time."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  others_at_least = jnp.sum(logits >= label_logit, axis=-1) - 1
  return (others_at_least < k).astype(jnp.float32)


def train_step(state: TrainState, batch: dict, *, strategy: strategies.Strategy,
               tx: optax.GradientTransformation, fc_features_total: tuple[int, int],
               dropout_rate: float) -> tuple[TrainState, dict]:
  """One SGD step on one global batch: forward, backward, the paper's update."""
  images, labels = batch['image'], batch['label']
  keep = model_lib.dropout_masks(jax.random.fold_in(state.rng, state.step), images.shape[0],
                                 fc_features_total, dropout_rate)

  def loss_fn(params):
    logits = strategy.forward(params, images, keep)
    return jnp.mean(cross_entropy(logits, labels)), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  metrics = {'loss': loss, 'top1': jnp.mean(top_k_correct(logits, labels, 1)),
             'learning_rate': optimizer_lib.learning_rate(state.opt_state),
             'grad_norm': grad_norm,
             # Checked on the host at log, eval and checkpoint steps only (no per-step sync).
             'finite': jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, strategy: strategies.Strategy) -> dict:
  """Sums over the real (mask = 1) examples of a padded batch: loss, top-1 and top-5 hits.

  `batch['image']` is [B, S, S, 3] (one crop per image) or [B, N, S, S, 3]: N crops per image
  (the paper's ten patches), whose softmax outputs are averaged before the loss and the top-k.
  The crops go through the network one position at a time, so memory is that of one crop.
  """
  images = batch['image']
  if images.ndim == 4:
    log_probs = jax.nn.log_softmax(strategy.forward(params, images, None))
  else:
    num_crops = images.shape[1]
    crop_log_probs = jax.lax.map(
        lambda i: jax.nn.log_softmax(strategy.forward(params, images[:, i], None)),
        jnp.arange(num_crops))  # [N, B, C]
    # log of the mean of the N softmax outputs
    log_probs = jax.nn.logsumexp(crop_log_probs, axis=0) - jnp.log(float(num_crops))
  mask = batch['mask']
  k5 = min(5, log_probs.shape[-1])
  return {'loss': jnp.sum(cross_entropy(log_probs, batch['label']) * mask),
          'top1': jnp.sum(top_k_correct(log_probs, batch['label'], 1) * mask),
          'top5': jnp.sum(top_k_correct(log_probs, batch['label'], k5) * mask),
          'count': jnp.sum(mask)}


def initial_state(net: model_lib.Tower, tx: optax.GradientTransformation, rng: jax.Array,
                  image_size: int) -> TrainState:
  """The state before step 1: the network initialised from `rng` (section 5), zero momentum, the
  dropout key split from the same seed."""
  init_rng, dropout_rng = jax.random.split(rng)
  params = model_lib.init_params(net, init_rng, image_size)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=dropout_rng)
