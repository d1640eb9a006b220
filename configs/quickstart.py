"""The paper's full network on the generated 10-class dataset: the first thing to run.

    python -m alexnet_jax.main --config=configs/quickstart.py --workdir=/tmp/alexnet_quickstart

Needs no download: the first run writes `synthetic_shapes/default` (JPEGs of 200-500 px) into
the tfds data dir, later runs reuse it. Same network, init, update rule and preprocessing as
configs/paper.py; only the data, the class count and the step budget differ.
Expected (2-core CPU, two simulated devices): see README, "Quickstart".
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = 'synthetic_shapes/default'
  c.model.num_classes = 10
  c.cache_decoded = True  # 2,600 images of 256 x 256 x 3: about 0.5 GB
  c.batch_size = 64
  c.eval_batch_size = 100
  c.num_train_steps = 120
  c.log_every_steps = 10
  c.eval_every_steps = 60
  c.checkpoint_every_steps = 60
  return c
