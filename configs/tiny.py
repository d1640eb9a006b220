"""A few small steps on small generated images, for tests: seconds, not minutes.

    python -m alexnet_jax.main --config=configs/tiny.py --workdir=/tmp/alexnet_tiny

Same layer structure as the paper (two towers, LRN, overlapping pooling, dropout, cross-tower
conv3/fc6/fc7/fc8) with narrow layers on 64 x 64 crops of 72 x 72 images. Layers this narrow
pass almost no signal from the paper's N(0, 0.01^2) init (fan-ins of 144 to 432), so tiny uses
the 'he' init with unit-variance inputs; the update rule is the paper's.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = 'synthetic_shapes/tiny'
  c.resize_size = 72
  c.image_size = 64
  c.cache_decoded = True
  c.shuffle_buffer = 512
  c.model.num_classes = 10
  c.model.conv_features = (16, 32, 48, 48, 32)
  c.model.fc_features = (128, 128)
  c.batch_size = 32
  c.eval_batch_size = 48
  c.model.init_scheme = 'he'
  c.std_rgb = (58.4, 57.1, 57.4)
  c.learning_rate = 0.01
  c.num_train_steps = 120
  c.log_every_steps = 10
  c.eval_every_steps = 60
  c.checkpoint_every_steps = 60
  return c
