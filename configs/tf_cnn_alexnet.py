"""TensorFlow's 2017 benchmark AlexNet (tf_cnn_benchmarks), one tower, data parallel, float32.

    python -m alexnet_jax.bench --config=configs/tf_cnn_alexnet.py --strategies=data --devices=N
    python -m alexnet_jax.plan --published        # replays the published DGX-1 figures

The network of tensorflow/benchmarks scripts/tf_cnn_benchmarks/alexnet_model.py at revision
9165a70 (the one TensorFlow's benchmarks page names for its May 2017 DGX-1 results): a 227 x 227
input (224 + 3, "VALID requires padding the images by 3"), conv 64 11x11/4 VALID, max pool 3/2,
conv 192 5x5 SAME, pool, conv 384 3x3, conv 384 3x3, conv 256 3x3 (SAME), pool, fc 4096, dropout,
fc 4096, dropout, and the benchmark's own final layer of 1001 classes (its label set keeps
index 0 for a background class). No LRN. Batch 512 per GPU. Here: 61,842,345 parameters; conv1
55 x 55, pool1 27, pool2 13, pool5 6 x 6 x 256 = 9216 inputs to fc6. model.conv1_padding(227) is
0, so conv1 is exactly the benchmark's VALID convolution.

What the model here does not express: the benchmark's weight initialisation (zero biases, fc
weights N(0, 2 / fan_in), TF's default conv initialiser) and its input scaling to [-1, 1]; its
step is plain SGD with weight decay 4e-5 (tf_cnn_benchmarks' default), this project's is the
paper's momentum update. Neither changes the shapes, FLOPs or collectives the plan compiles.

The data part is configs/default.py's (the generated synthetic_shapes dataset): this config exists
to be compiled and benchmarked, as the published figures were measured on synthetic data. It
trains with `--config.dataset=imagenet2012 --config.model.num_classes=1000` (ImageNet as tfds
serves it has 1000 classes, not the benchmark's 1001).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.image_size = 227
  # One tower: make_network applies model.one_tower_widths to these per-tower widths, which
  # doubles conv5 and fc6/fc7 (the paper's one-GPU net keeps those at both towers' width). So
  # conv5 and the fc widths are half the published totals here: the built network has
  # 64-192-384-384-256 kernels and 4096-4096 neurons.
  c.model.num_towers = 1
  c.model.conv_features = (64, 192, 384, 384, 128)
  c.model.fc_features = (2048, 2048)
  c.model.lrn = False
  c.model.num_classes = 1001
  c.model.dtype = 'float32'
  c.parallelism = 'data'
  c.batch_size = 512  # per GPU in the benchmark; the global batch on one device
  c.eval_batch_size = 512
  return c
