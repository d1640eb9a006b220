"""Krizhevsky 2014 ("One weird trick"): cuda-convnet2's one-GPU ImageNet net, hybrid parallelism.

    python -m alexnet_jax.bench --config=configs/krizhevsky2014.py --strategies=hybrid --devices=N
    python -m alexnet_jax.plan --published        # replays the published K20 figures

The network of cuda-convnet2's layers/layers-imagenet-1gpu.cfg (akrizhevsky/cuda-convnet2,
revision 3238bf0), trained with `--inner-size 224 --mini 128`: conv 64 11x11/4 (padding 0), LRN,
max pool 3/2, conv 192 5x5 pad 2, LRN, pool, conv 384 3x3 pad 1, conv 256 3x3 pad 1, conv 256
3x3 pad 1, pool, fc 4096, dropout, fc 4096, dropout, fc 1000. One tower (no towers, no cross-tower
layers). Here: 61,100,840 parameters; conv1 55 x 55, pool1 27, pool2 13, pool5 6 x 6 x 256 = 9216
inputs to fc6. The paper's hybrid scheme: convolutions data parallel (128 images per GPU), the
fully-connected layers' neurons split over the GPUs; batch 128 per GPU, 128 x N in all.

cuda-convnet2 computes a convolution's output size as 1 + ceil((S + 2 pad - filter) / stride):
55 for a 224 crop with padding 0, the last filters reading past the image's bottom and right
edges as zeros. model.conv1_padding(224) = 3 pads those edges by 3, so conv1 here is the same
55 x 55 convolution. Its pooling (3/2, ceil) gives 27, 13, 6 as the floor here does.

What the model here does not express (numerics only; no shape, FLOP or collective changes):
- the order around the first LRN: cuda-convnet2's conv1 has no activation; it runs conv1 -> LRN
  -> max pool -> ReLU (the ReLU is pool1's neuron), so the LRN sees conv1's raw output; here,
  as in the 2012 paper, conv1 -> ReLU -> LRN -> pool. Around conv2 both run conv -> ReLU -> LRN
  -> pool; conv5's ReLU after the pool commutes with max pooling.
- the LRN constants: cuda-convnet2's cmrnorm divides `scale` by `size` (layer.py), so its
  alpha is 1e-4 / 5 per squared neighbour with k = minDiv = 2, n = 5, beta = 0.75; here the 2012
  paper's alpha = 1e-4, not divided.
- initialisation: cuda-convnet2's 0.03 weights in conv3-conv5 and fc1000's bias -7; the
  update schedule (its dexp learning rates).

The data part is configs/default.py's (the generated synthetic_shapes dataset): this config exists
to be compiled and benchmarked. It trains with `--config.dataset=imagenet2012` (1000 classes, as
here; the preprocessing is the defaults', configs/paper.py has the 2012 paper's).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.image_size = 224
  # One tower: make_network applies model.one_tower_widths to these per-tower widths, which
  # doubles conv5 and fc6/fc7 (the paper's one-GPU net keeps those at both towers' width). So
  # conv5 and the fc widths are half the published totals here: the built network has
  # 64-192-384-256-256 kernels and 4096-4096 neurons.
  c.model.num_towers = 1
  c.model.conv_features = (64, 192, 384, 256, 128)
  c.model.fc_features = (2048, 2048)
  c.model.lrn = True  # after conv1 and conv2, as cuda-convnet2's rnorm1 and rnorm2
  c.model.num_classes = 1000
  c.model.dtype = 'float32'
  c.parallelism = 'hybrid'
  c.batch_size = 128  # per GPU in the paper; the global batch on one device
  c.eval_batch_size = 128
  return c
