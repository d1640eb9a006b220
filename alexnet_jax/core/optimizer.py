"""The paper's update rule (section 5) as an optax transformation.

    v_{i+1} = 0.9 v_i - 0.0005 * eps * w_i - eps * <dL/dw>_{D_i}
    w_{i+1} = w_i + v_{i+1}

The learning rate eps multiplies the gradient (and the decay) BEFORE they enter the momentum
buffer, so dividing eps by 10 does not rescale the velocity already accumulated. `optax.sgd`
applies the rate after the momentum and differs exactly there. Weight decay is coupled (inside
the update) and, as in Caffe and cuda-convnet, biases are exempt.
"""

import jax
import ml_collections
import optax


def decay_mask(params):
  """True for the leaves that are decayed: every weight, no bias."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) != 'bias', params)


@optax.inject_hyperparams
def paper_sgd(learning_rate: float, momentum: float = 0.9,
              weight_decay: float = 5e-4) -> optax.GradientTransformation:
  """SGD with momentum in the paper's form; the learning rate is a state entry so a schedule
  driven by validation error (section 5) can change it between steps."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=decay_mask),  # g + 0.0005 w
      optax.scale_by_learning_rate(learning_rate),  # -eps (g + 0.0005 w)
      optax.trace(decay=momentum),  # v <- 0.9 v - eps (g + 0.0005 w); update = v
  )


def from_config(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The update rule with a config's learning rate, momentum and weight decay."""
  return paper_sgd(learning_rate=config.learning_rate, momentum=config.momentum,
                   weight_decay=config.weight_decay)


def learning_rate(opt_state) -> jax.Array:
  """The learning rate the next update will use."""
  return opt_state.hyperparams['learning_rate']


def set_learning_rate(opt_state, value: float):
  """The same optimizer state with a new learning rate; the velocity is left as it is."""
  hyperparams = dict(opt_state.hyperparams, learning_rate=jax.numpy.asarray(
      value, dtype=opt_state.hyperparams['learning_rate'].dtype))
  return opt_state._replace(hyperparams=hyperparams)
