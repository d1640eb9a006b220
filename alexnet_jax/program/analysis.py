"""One analysis of a compiled train step, shared by the communication report (comms.py, on the
devices this process has) and the pod plan (plan.py, compiled for a target): the program read
once (hlo.Module), its collectives attributed to layers, their bytes set against the formula
in the program's own dtypes (activations in the compute dtype, parameters in float32), every
difference explained, and the ops the cost model times (ops.step_ops).
"""

from typing import Optional

import ml_collections

from alexnet_jax.core import run as run_lib
from alexnet_jax.program import formula
from alexnet_jax.program import hlo
from alexnet_jax.program import ops
from alexnet_jax.program.hlo import LAYERS, LOSS, Module, bytes_by_layer, parse_collectives

# Per strategy and layer, the collectives the layer-table formula counts (formula.analytic_bytes).
_TOWER_READS = ('conv3', 'fc6', 'fc7', 'fc8')


def expected_kinds(parallelism: str, layer: str) -> set:
  ag_rs = {'all-gather', 'reduce-scatter'}
  if parallelism == 'towers':
    return ag_rs if layer in _TOWER_READS else set()
  if parallelism == 'towers_data':
    return (ag_rs if layer in _TOWER_READS else set()) | {'all-reduce'}
  if parallelism == 'layerwise':  # any of them, as its spec says (formula.spec_bytes)
    return ag_rs | {'all-reduce'}
  if parallelism == 'hybrid':
    return {'all-reduce'} if layer.startswith('conv') else ag_rs | (
        {'all-reduce'} if layer == 'fc8' else set())
  return {'all-reduce'} if parallelism == 'data' else ag_rs


def leaf_shapes(run: run_lib.Run) -> dict:
  """{layer: [(whole shape, one device's shard) per parameter]}: what a gradient collective of
  that layer carries, to attribute the collectives a compiler combined without their names."""
  return {layer: [(tuple(a.shape), tuple(a.sharding.shard_shape(a.shape)))
                  for a in leaves.values()]
          for layer, leaves in run.abstract_state.params.items()}


def _is_parameter(c, leaves: dict) -> bool:
  """Whether a collective carries a parameter (or its gradient): its shape is one of its layer's
  parameters', whole or one device's shard (size-1 dimensions aside)."""
  squeeze = lambda shape: tuple(d for d in shape if d != 1)
  return any(squeeze(c.shape) in {squeeze(s) for s in pair} for pair in leaves.get(c.layer, []))


def explain(parallelism: str, collectives: list, measured: dict, analytic: dict,
            compute_dtype: str, leaves: Optional[dict] = None,
            gradient_exchange_dtype: str = 'float32') -> dict:
  """Compiled bytes against the formula, per layer, with every reason they differ: collectives
  moved in another dtype than the program's, issued more than once, decomposed or added; and,
  per instruction that carries several arrays, what the compiler combined and how its parts
  were attributed. `leaves`: leaf_shapes(run), to tell parameters from activations; a
  parameter's all-reduce or reduce-scatter (its gradient sum) is in gradient_exchange_dtype."""
  leaves = leaves or {}
  act_bytes = _DTYPE_BYTES[compute_dtype]
  grad_bytes = _DTYPE_BYTES[gradient_exchange_dtype]
  layers = {}
  for layer in LAYERS + (LOSS, '?'):
    expected = expected_kinds(parallelism, layer)
    mine = [c for c in collectives if c.layer == layer]
    m, a = measured.get(layer, 0.0), analytic.get(layer, 0.0)
    if not mine and not a:
      continue
    close = lambda x: abs(x - a) <= max(0.01 * a, 16e3)  # 1 %, or 16 kB of stray scalars
    notes = []
    if layer == LOSS:
      notes.append('added: jit partitions the loss and metrics on the sharded logits (not in '
                   'the formula; bounded by formula.loss_bytes_bound)')
    elif layer == '?':
      notes.append('unattributed: no layer in its name or its input\'s, no parameter of its '
                   'shape')
    # The same collective (kind, shape, dtype, name) issued several times: re-gathered for each
    # use instead of kept (rematerialized), which the formula, counting one, does not.
    seen = {}
    for c in mine:
      key = (c.kind, tuple(c.shape), c.dtype, c.op_name)
      seen[key] = seen.get(key, 0) + 1
    repeats = {k: v for k, v in seen.items() if v > 1 and k[0] != 'all-reduce' and k[3]}
    once = sum(c.bytes_per_device for c in mine) - sum(
        c.bytes_per_device * (seen[(c.kind, tuple(c.shape), c.dtype, c.op_name)] - 1)
        / seen[(c.kind, tuple(c.shape), c.dtype, c.op_name)] for c in mine)
    if repeats and layer not in (LOSS, '?'):
      notes.append('repeated: ' + ', '.join(f'{k[0]} of {k[2]}{list(k[1])} issued {v} times'
                                            for k, v in repeats.items())
                   + f' (the compiler gathers again for each use rather than keep the gathered '
                   f'copy; counted once: {once / 1e6:.3f} MB)')
    # Bytes as the program's dtypes would move them (parameters and gradients float32,
    # activations and their gradients the compute dtype), each collective counted once.
    program_bytes = lambda c: ((grad_bytes if c.kind in ('all-reduce', 'reduce-scatter') else 4)
                               if _is_parameter(c, leaves) else act_bytes)
    floats = [c for c in mine if c.dtype in ('f32', 'bf16', 'f16')]
    as_program = sum(c.bytes_per_device * program_bytes(c) / hlo.DTYPE_BYTES[c.dtype]
                     / seen[(c.kind, tuple(c.shape), c.dtype, c.op_name)] for c in floats)
    changed = sorted({f'{c.kind} {c.dtype}' for c in floats
                      if hlo.DTYPE_BYTES[c.dtype] != program_bytes(c)})
    if changed and layer not in (LOSS, '?'):
      notes.append(f'dtype: {", ".join(changed)} where the program has '
                   f'{"16-bit" if act_bytes == 2 else "float32"} activations and float32 '
                   'parameters (the compiler moved a conversion across the collective); in the '
                   f'program\'s dtypes{", counted once" if repeats else ""}: '
                   f'{as_program / 1e6:.3f} MB')
    widened = sorted({f'{c.kind} {c.dtype}' for c in mine if c.widened_to})
    if widened and layer not in (LOSS, '?'):
      notes.append(f'widened: {", ".join(widened)} reduced in float32 by the compiler (XLA:CPU '
                   'has no 16-bit float reduction: each device\'s values are rounded to 16 bits '
                   'first); counted at 2 bytes, as GPUs and TPUs move them')
    extra = {c.kind for c in mine} - expected
    if extra and layer not in (LOSS, '?'):
      notes.append(f'kinds: the compiler exchanges this layer with '
                   f'{", ".join(sorted({c.kind for c in mine}))} where the formula counts '
                   f'{", ".join(sorted(expected)) or "nothing"}: '
                   f'{m / 1e6:.3f} MB against {a / 1e6:.3f} MB')
    equal = close(m)
    explained = equal or close(as_program) or (repeats and close(once)) or bool(extra)
    unnamed = measured.get('?', 0.0)
    if not explained and m < a and unnamed and layer not in (LOSS, '?'):
      notes.append(f'missing: {(a - m) / 1e6:.3f} MB of the formula\'s; the collectives the '
                   f'compiler made without a name ("?") carry {unnamed / 1e6:.3f} MB')
      explained = True
    if not explained and layer not in (LOSS, '?'):
      notes.append(f'unexplained: {m / 1e6:.3f} MB compiled against {a / 1e6:.3f} MB by formula')
    layers[layer] = {'compiled_bytes': m, 'analytic_bytes': a,
                     'status': 'equal' if equal else 'explained' if explained else 'differs',
                     'notes': notes}
  combined = {}
  for c in collectives:
    if c.combined > 1:
      e = combined.setdefault(c.instruction, {'kind': c.kind, 'arrays': c.combined,
                                              'layers': [], 'attributed_by': []})
      for field, value in (('layers', c.layer), ('attributed_by', c.attributed_by)):
        if value not in e[field]:
          e[field].append(value)
  return {'layers': layers, 'combined': combined}


_DTYPE_BYTES = {'float32': 4, 'bfloat16': 2, 'float16': 2}


def activation_bytes(config: ml_collections.ConfigDict) -> int:
  return _DTYPE_BYTES[config.model.dtype]


def gradient_bytes(config: ml_collections.ConfigDict) -> int:
  """Bytes of a gradient element summed across batch shards (config.gradient_exchange_dtype)."""
  return _DTYPE_BYTES[config.gradient_exchange_dtype]


def compiled_step(run: run_lib.Run, config: ml_collections.ConfigDict, hlo_text: str) -> dict:
  """What a compiled train step of `run` moves and computes, against the formula.

  The formula counts activations in the config's compute dtype, parameters in float32 and the
  gradients summed across batch shards in config.gradient_exchange_dtype, as the program holds
  them; comms and plan both call this, so a bfloat16 report is compared with a bfloat16 formula
  wherever it is made."""
  n = run.strategy.num_devices
  module = Module(hlo_text)  # read once: collectives, schedule, ops
  leaves = leaf_shapes(run)
  collectives = parse_collectives(module, n, leaves)
  measured = bytes_by_layer(collectives)
  table = formula.layer_table(run.net, config.image_size)
  spec = getattr(run.strategy, 'spec', None)  # a layerwise strategy: the formula of its spec
  if spec is not None:
    analytic = formula.spec_bytes(spec, run.net, config.image_size, config.batch_size,
                                  act_bytes=activation_bytes(config),
                                  grad_bytes=gradient_bytes(config))
  else:
    analytic = formula.analytic_bytes(config.parallelism, n, config.batch_size, table,
                                      act_bytes=activation_bytes(config),
                                      num_towers=run.net.num_towers,
                                      grad_bytes=gradient_bytes(config))
  step_ops = ops.step_ops(module, collectives)
  compute = [o for o in step_ops if o.category in ('conv', 'matmul')]
  return {
      'collectives': collectives,
      'bytes_per_step': sum(measured.values()),
      'bytes_per_step_by_layer': measured,
      'analytic_bytes_per_step': sum(analytic.values()),
      'analytic_bytes_per_step_by_layer': analytic,
      'loss_metrics_bound': formula.loss_bytes_bound(config.batch_size),
      'unexplained_bytes': measured.get('?', 0.0),
      'explanations': explain(config.parallelism, collectives, measured, analytic,
                              config.model.dtype, leaves, config.gradient_exchange_dtype),
      'heavy_ops': module.heavy_ops(),
      'ops': [o.to_json() for o in step_ops],
      'op_flops_per_device': sum(o.flops for o in compute) or None,
  }
