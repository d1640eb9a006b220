"""The formula: what each strategy should move per step, and what a step computes, from the
layer table (the network's parameters and the activations its towers exchange).

comms.py and plan.py compare what a compiler's program moves with these numbers; they are the
paper's network written out by hand, independent of any compiled program.
"""

import math
from typing import Optional

import jax

from alexnet_jax.core import layerwise
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from alexnet_jax.program.hlo import LAYERS
from jax.sharding import PartitionSpec as P


def layer_table(net, image_size: int) -> dict:
  """Per layer: parameters (all towers) and the per-tower width of the activation it reads
  across towers (conv3: pool2, fc6: pool5, fc7: fc6, fc8: fc7).

  The one-tower net (model.num_towers = 1) has no other tower: conv3 reads nothing across (0),
  and fc6, fc7, fc8 read the one tower's whole pool5, fc6, fc7 (what `hybrid` gathers)."""
  params = jax.eval_shape(lambda k: model_lib.init_params(net, k, image_size),
                          jax.random.key(0))
  pool = lambda s: (s - 3) // 2 + 1
  conv1 = (image_size + model_lib.conv1_padding(image_size) - 11) // 4 + 1
  s2 = pool(pool(conv1))  # conv2 keeps the size (pad 2), so do conv3-conv5 (pad 1)
  s5 = pool(s2)
  c = net.conv_features
  reads = {'conv3': s2 * s2 * c[1] if net.num_towers == 2 else 0, 'fc6': s5 * s5 * c[4],
           'fc7': net.fc_features[0], 'fc8': net.fc_features[1]}
  outputs = {'conv1': conv1 * conv1, 'conv2': pool(conv1) ** 2, 'conv3': s2 * s2,
             'conv4': s2 * s2, 'conv5': s2 * s2}
  return {layer: {'params': sum(math.prod(a.shape) for a in params[layer].values()),
                  'reads_per_tower': reads.get(layer, 0),
                  'positions': outputs.get(layer, 1),
                  'leaves': {w: tuple(a.shape) for w, a in params[layer].items()}}
          for layer in LAYERS}


def analytic_bytes(parallelism: str, num_devices: int, batch_size: int, table: dict,
                   dtype_bytes: int = 4, act_bytes: Optional[int] = None,
                   num_towers: int = 2, grad_bytes: Optional[int] = None) -> dict[str, float]:
  """Bytes per device per step, per layer: parameters of `dtype_bytes`, the gradients summed
  across batch shards of `grad_bytes` (default the same; 2 for config.gradient_exchange_dtype
  bfloat16 or float16), activations (and their cotangents) of `act_bytes` (default the same; 2
  for bfloat16 compute), for the net of `num_towers` towers (model.num_towers: 2, or 1 for data,
  fsdp and hybrid).

  B = batch, n = devices, a_L = per-tower activation a layer reads across towers, W_L its
  parameters (all towers), ar(g) = 2 (g-1)/g (ring all-reduce):
    towers       2 B a_L                             (all-gather fwd + reduce-scatter bwd, g = 2)
    towers_data  2 (2B/n) a_L + ar(n/2) W_L / 2      (towers on B/(n/2); a tower's grads over data)
    data, fsdp   ar(n) W_L                           (fsdp: all-gather W fwd + reduce-scatter bwd;
                                                     a leaf it cannot split: all-reduce bwd)
    hybrid       conv: ar(n) W_L; fc6/fc7/fc8: 2 (n-1)/n B 2 a_L (gather the whole batch's
                 features, scatter their gradients); fc8 adds ar(n/2) W_fc8 / 2
    hybrid,      conv: ar(n) W_L; fc6/fc7/fc8: 2 (n-1)/n B a_L (gather the whole batch's
    one tower    features of the one tower, scatter their gradients); no fc8 gradient
                 all-reduce (fc8 is split by class over all n)
  Every W above is gradients (grad_bytes), but for fsdp's all-gather of the parameters
  ((n-1)/n W_L of dtype_bytes; with grad_bytes = dtype_bytes fsdp's total is ar(n) W_L).
  """
  if num_towers not in (1, 2) or (num_towers == 1 and parallelism in strategies.TOWER_STRATEGIES):
    raise ValueError(f'no formula for {parallelism!r} with {num_towers} tower(s)')
  n, b, d = num_devices, batch_size, dtype_bytes
  da = d if act_bytes is None else act_bytes
  dg = d if grad_bytes is None else grad_bytes
  ar = lambda g: 2 * (g - 1) / g
  out = {}
  for layer, row in table.items():
    w, a = row['params'] * dg, row['reads_per_tower'] * da  # w: the layer's gradients
    if parallelism == 'towers':
      v = 2 * b * a
    elif parallelism == 'towers_data':
      v = 2 * (b // (n // 2)) * a + ar(n // 2) * w / 2
    elif parallelism == 'data' or (parallelism == 'fsdp' and dg == d):
      v = ar(n) * w
    elif parallelism == 'fsdp':  # split leaves: gather (d) + reduce-scatter (dg); others: ar (dg)
      split = strategies.fsdp_spec(n)
      v = sum((n - 1) / n * math.prod(shape) * (d + dg) if split(layer, what, shape) != P()
              else ar(n) * math.prod(shape) * dg for what, shape in row['leaves'].items())
    elif parallelism == 'hybrid':
      if layer.startswith('conv'):
        v = ar(n) * w
      else:
        v = 2 * (n - 1) / n * b * num_towers * a + (
            ar(n // 2) * w / 2 if layer == 'fc8' and num_towers == 2 else 0.0)
    else:
      raise ValueError(f'no formula for {parallelism!r}')
    out[layer] = float(v)
  return out


def loss_bytes_bound(batch_size: int, num_leaves: int = 16) -> float:
  """An upper bound on what jit adds for the loss and metrics on the sharded logits: a handful
  of per-example values (max, sums, label logit, hit) and one scalar per gradient leaf (the
  gradient norm), each all-reduced at most once: 16 per-example values and 3 per leaf."""
  return 2.0 * 4 * (16 * batch_size + 3 * num_leaves + 16)




def step_flops(net, image_size: int, batch_size: int) -> float:
  """FLOPs of one training step of the whole network on `batch_size` images, by the layer table:
  a convolution or matrix product costs 2 x (kernel size) per output position per image, both
  towers; the backward pass twice the forward (gradients of inputs and of weights). LRN, pooling,
  ReLU, dropout and the update are left out: a few per cent of the convolutions'."""
  table = layer_table(net, image_size)
  forward = sum(2.0 * math.prod(row['leaves']['kernel']) * row['positions']
                for row in table.values())
  return 3.0 * forward * batch_size


def train_flops_per_image(net, image_size: int) -> int:
  """Model FLOPs of one training image, as bench, calibrate and the plan's calibration count
  them: 2 FLOPs per multiply-add of every conv and fc layer (model.layer_macs), forward (1x) plus
  backward (2x: input gradient and weight gradient), except conv1, whose input gradient (the
  image's) is never computed: 2x. ReLU, LRN, pooling, softmax and the update are not counted."""
  macs = model_lib.layer_macs(net, image_size)
  return sum(2 * m * (2 if layer == 'conv1' else 3) for layer, m in macs.items())


def activation_per_image(net, image_size: int) -> dict[str, int]:
  """Values per image of each layer's output, all towers (after its pooling): what the next
  layer's resharding moves. Arithmetic on the net's widths, pools and the crop."""
  pool = lambda s: (s - net.pool_window) // net.pool_stride + 1
  s1 = pool((image_size + model_lib.conv1_padding(image_size) - 11) // 4 + 1)
  s2 = pool(s1)
  s5 = pool(s2)
  t, c = net.num_towers, net.conv_features
  sides = {'conv1': s1, 'conv2': s2, 'conv3': s2, 'conv4': s2, 'conv5': s5}
  out = {layer: t * sides[layer] ** 2 * c[i] for i, layer in enumerate(strategies.CONV_LAYERS)}
  out.update(fc6=t * net.fc_features[0], fc7=t * net.fc_features[1], fc8=t * net.classes_per_tower)
  return out


def spec_bytes(spec, net, image_size: int, batch_size: int, dtype_bytes: int = 4,
               act_bytes: Optional[int] = None, grad_bytes: Optional[int] = None
               ) -> dict[str, float]:
  """Bytes per device per step, per layer, of a layerwise spec (core/layerwise.py), by the ring
  convention of `analytic_bytes`: the sum of `layer_collectives`."""
  splits, out, previous = dict(spec.layers), {}, None
  table, per_image = layer_table(net, image_size), activation_per_image(net, image_size)
  for layer in strategies.LAYERS:
    found = layer_collectives(net, image_size, batch_size, spec.sizes, previous, layer,
                              splits[layer], dtype_bytes, act_bytes, grad_bytes, table, per_image)
    out[layer] = float(sum(c[3] for c in found))
    previous = splits[layer]
  return out


def layer_collectives(net, image_size: int, batch_size: int, sizes: dict, previous, layer: str,
                      split, dtype_bytes: int = 4, act_bytes: Optional[int] = None,
                      grad_bytes: Optional[int] = None, table: Optional[dict] = None,
                      per_image: Optional[dict] = None) -> list[tuple[str, str, tuple, float]]:
  """The collectives of one layer of a layerwise spec, given the previous layer's split (None
  for conv1): (part, kind, mesh axes of the group, bytes per device), part 'reshard' (depends on
  both splits) or 'params' (on this one only). With x the local bytes of the activation the
  layer reads, W a parameter leaf's local bytes, g the devices of a group, ar(g) = 2 (g-1)/g:
    gather over the axes the layer drops   (g-1)/g x gathered, and as much again backward
                                           (reduce-scatter) if the layer uses one of those axes
    slice over an axis x is the same on    nothing forward; backward ar(g) x (the unsliced x),
    (new split)                            the transpose of making x differ over that axis
    tower/out axes x is the same on        backward ar(g) x (the input's cotangent sum, as
                                           Megatron's column-parallel layers)
    replicated parameters, batch axes      ar(g) W (the gradient all-reduce)
    sharded parameters, batch axes         (g-1)/g W forward + (g-1)/g W backward (a leaf no
                                           free axis of which g divides: ar(g) W)
  """
  da = dtype_bytes if act_bytes is None else act_bytes
  dg = dtype_bytes if grad_bytes is None else grad_bytes
  ar = lambda g: 2 * (g - 1) / g
  shards = lambda axes: math.prod(sizes[a] for a in axes)
  common = lambda h, w: next((i for i, (a, b) in enumerate(zip(h, w)) if a != b),
                             min(len(h), len(w)))
  s, out = split, []
  layers = strategies.LAYERS
  table = table or layer_table(net, image_size)
  per_image = per_image or activation_per_image(net, image_size)
  if previous is not None:
    used = s.used
    need = (s.tower,) if layer in ('conv2', 'conv4', 'conv5') and s.tower else ()
    have, want = (previous.batch, previous.channels), (s.batch, need)
    varying = set(previous.used)
    x = (batch_size * per_image[layers[layers.index(layer) - 1]]
         * da / (shards(have[0]) * shards(have[1])))
    for h, w in ((have[1], want[1]), (have[0], want[0])):
      for rest, kept in layerwise.gather_runs(tuple(h[common(h, w):]), used):
        g = shards(rest)
        x *= g
        out.append(('reshard', 'all-gather', rest, (g - 1) / g * x))
        if kept:
          out.append(('reshard', 'reduce-scatter', rest, (g - 1) / g * x))
        else:
          varying -= set(rest)
    for h, w in ((have[1], want[1]), (have[0], want[0])):
      new = w[common(h, w):]
      missing = tuple(a for a in new if a not in varying)
      if missing:
        out.append(('reshard', 'all-reduce', missing, ar(shards(missing)) * x))
      x /= shards(new)
      varying |= set(new)
    missing = tuple(a for a in s.channels if a not in varying)
    if missing:
      out.append(('reshard', 'all-reduce', missing, ar(shards(missing)) * x))
  g = shards(s.batch)
  for shape in table[layer]['leaves'].values():
    local = math.prod(shape) / (2 if s.tower else 1) / shards(s.out)
    if g <= 1:
      continue
    free = [i for i in range(len(shape))
            if not (i == 0 and s.tower) and not (i == len(shape) - 1 and s.out)]
    if s.params == 'sharded' and any(shape[i] % g == 0 for i in free):
      out.append(('params', 'all-gather', s.batch, (g - 1) / g * local * dtype_bytes))
      out.append(('params', 'reduce-scatter', s.batch, (g - 1) / g * local * dg))
    else:
      out.append(('params', 'all-reduce', s.batch, ar(g) * local * dg))
  return [c for c in out if c[3] > 0]
