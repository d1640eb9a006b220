"""A few small steps on small generated images, for tests: seconds, not minutes.

    python -m alexnet_jax.main --config=configs/tiny.py --workdir=/tmp/alexnet_tiny

Same layer structure as the paper (two towers, LRN, overlapping pooling, dropout, cross-tower
conv3/fc6/fc7/fc8) with narrow layers on 64 x 64 crops of 72 x 72 images.
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
  c.model.conv_features = (8, 16, 24, 24, 16)
  c.model.fc_features = (64, 64)
  c.batch_size = 32
  c.eval_batch_size = 48
  c.learning_rate = 0.01
  c.num_train_steps = 40
  c.log_every_steps = 5
  c.eval_every_steps = 20
  c.checkpoint_every_steps = 20
  return c
