"""The work of a compiled step, op by op: what the cost model (pods/costmodel.py) times.

Each instruction of the optimized module's entry computation, in its scheduled order, becomes an
`Op`: a convolution or matrix product with its FLOPs (from the operand shapes and dimension
numbers, including the cuDNN and cuBLAS custom calls XLA:GPU emits), memory-bound work with the
bytes it reads and writes, or a collective (synchronous, or the start and done of an asynchronous
one, so the schedule's overlap can be replayed). The text is read by hlo.py.
"""

import dataclasses
import math
import re
from typing import Sequence

from alexnet_jax.program.hlo import DTYPE_BYTES, KINDS, LAYERS, Collective, Instruction, Module, shapes_of

# Ops that move no data of their own: views, tuples, parameters, control.
_FREE = {'parameter', 'get-tuple-element', 'tuple', 'bitcast', 'constant', 'after-all',
         'partition-id', 'replica-id', 'opt-barrier', 'add-dependency', 'iota'}
_CUDNN_CONV = re.compile(r'__cudnn\$conv(BiasActivationForward|Forward|BackwardInput|'
                         r'BackwardFilter)')
_GEMM_CALL = re.compile(r'__cublas\$(lt\$matmul|gemm)|gemm', re.IGNORECASE)


@dataclasses.dataclass
class Op:
  """One instruction of a step's schedule, as the cost model sees it.

  `category`: 'conv' or 'matmul' (bound by the chip's FLOP rate or its memory, whichever is
  slower: a roofline), 'memory' (elementwise fusions, LRN, pooling, copies: bound by memory
  bandwidth), 'collective' (synchronous, or the start of an asynchronous one: `collective`
  names the instructions parse_collectives lists for it), 'wait' (the done of an asynchronous
  collective: `waits_for` names its start), or 'free' (views, tuples, parameters)."""
  name: str
  category: str
  flops: float = 0.0
  bytes: float = 0.0  # memory read and written: operands + result
  layer: str = ''
  collective: list = dataclasses.field(default_factory=list)
  waits_for: str = ''
  asynchronous: bool = False

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _nbytes(type_text: str) -> float:
  return float(sum(DTYPE_BYTES[d] * math.prod(s) for d, s in shapes_of(type_text)))


def _dims_attr(attrs: str, field: str) -> list[int]:
  m = re.search(field + r'=\{([\d,]*)\}', attrs)
  return [int(d) for d in m.group(1).split(',') if d] if m else []


def _conv_flops(filter_shape: tuple, output_shape: tuple, labels: str) -> float:
  """2 x (output elements) x (filter elements per output feature): every output value of a
  convolution is a sum over the filter's window and input features. The same count holds for
  the two backward convolutions (input and filter gradients), given the forward's shapes."""
  m = re.match(r'\w+_(\w+)->\w+', labels)
  rhs = m.group(1) if m else ''
  o = rhs.index('o') if 'o' in rhs and len(rhs) == len(filter_shape) else len(filter_shape) - 1
  return 2.0 * math.prod(output_shape) * math.prod(filter_shape) / max(filter_shape[o], 1)


def _dot_flops(module: 'Module', ins: 'Instruction', lhs_contracting: list[int]) -> float:
  lhs = module.instructions.get(ins.operands[0]) if ins.operands else None
  if lhs is None:
    return 0.0
  lhs_shape = shapes_of(lhs.type)[0][1]
  result = shapes_of(ins.type)[0][1]
  return 2.0 * math.prod(result) * math.prod(lhs_shape[d] for d in lhs_contracting)


def _instruction_flops(module: 'Module', ins: 'Instruction') -> tuple[str, float]:
  """('conv' | 'matmul' | '', FLOPs) of one instruction, looking inside fusions."""
  if ins.op == 'dot':
    return 'matmul', _dot_flops(module, ins, _dims_attr(ins.attrs, 'lhs_contracting_dims'))
  if ins.op == 'convolution':
    labels = re.search(r'dim_labels=([\w>\-]+)', ins.attrs)
    rhs = module.instructions.get(ins.operands[1]) if len(ins.operands) > 1 else None
    if rhs is None:
      return 'conv', 0.0
    return 'conv', _conv_flops(shapes_of(rhs.type)[0][1], shapes_of(ins.type)[0][1],
                               labels.group(1) if labels else '')
  if ins.op == 'custom-call':
    target = re.search(r'custom_call_target="([^"]*)"', ins.attrs)
    target = target.group(1) if target else ''
    conv = _CUDNN_CONV.search(target)
    if conv:
      labels = re.search(r'dim_labels=([\w>\-]+)', ins.attrs)
      shape = lambda name: shapes_of(module.instructions[name].type)[0][1]
      result = shapes_of(ins.type)[0][1]
      if conv.group(1) == 'BackwardFilter':  # (input, output gradient) -> filter gradient
        filt, out = result, shape(ins.operands[1])
      elif conv.group(1) == 'BackwardInput':  # (output gradient, filter) -> input gradient
        filt, out = shape(ins.operands[1]), shape(ins.operands[0])
      else:  # (input, filter, ...) -> output
        filt, out = shape(ins.operands[1]), result
      return 'conv', _conv_flops(filt, out, labels.group(1) if labels else '')
    if _GEMM_CALL.search(target):
      m = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', ins.attrs)
      dims = [int(d) for d in re.findall(r'\d+', m.group(1))] if m else []
      return 'matmul', _dot_flops(module, ins, dims)
    return '', 0.0
  if ins.op == 'fusion':
    called = module.called(ins)
    kind, flops = '', 0.0
    for name in module.order.get(called, []):
      k, f = _instruction_flops(module, module.instructions[name])
      if k:
        kind = kind or k
        flops += f
    return kind, flops
  return '', 0.0


def _read_bytes(module: 'Module', ins: 'Instruction') -> float:
  """What an instruction reads: its operands, except that a fusion reading a parameter only
  through slices reads the slices (a tower's half of a stacked kernel, say)."""
  called = module.called(ins) if ins.op == 'fusion' else None
  users: dict = {}
  params: dict = {}
  if called:
    for name in module.order.get(called, []):
      sub = module.instructions[name]
      if sub.op == 'parameter':
        index = re.match(r'\s*(\d+)', sub.operand_text)
        params[name] = int(index.group(1)) if index else -1
      for o in sub.operands:
        users.setdefault(o, []).append(sub)
  total = 0.0
  for i, operand in enumerate(ins.operands):
    source = module.instructions.get(operand)
    if source is None:
      continue
    size = _nbytes(source.type)
    inner = [p for p, index in params.items() if index == i]
    if inner:
      readers = users.get(inner[0], [])
      while len(readers) == 1 and readers[0].op == 'bitcast':
        readers = users.get(readers[0].name, [])
      if readers and all(r.op in ('slice', 'dynamic-slice') for r in readers):
        size = min(size, sum(_nbytes(r.type) for r in readers))
    total += size
  return total


def step_ops(module: 'Module', collectives: Sequence[Collective] = ()) -> list[Op]:
  """The entry computation's instructions in their scheduled order, each with its FLOPs, the
  memory it reads and writes, and, for collectives, the entries of `collectives` (from
  parse_collectives on the same module) it runs."""
  by_instruction: dict = {}
  for c in collectives:
    by_instruction.setdefault(c.instruction, [])
    if c.instruction not in by_instruction[c.instruction]:
      by_instruction[c.instruction].append(c.instruction)
  inside: dict = {}  # async wrappers: the collective instruction inside the called computation
  for comp, names in module.order.items():
    for name in names:
      if name in by_instruction:
        inside.setdefault(comp, []).append(name)
  tpu_async = module.tpu_async_fusions()  # XLA:TPU's asynchronous collective fusions
  tpu_done = {done: start for start, done in tpu_async.items()}
  ops = []
  for name in module.order.get(module.entry, []):
    ins = module.instructions[name]
    source = re.search(r'op_name="([^"]*)"', ins.attrs)
    if not source and ins.op == 'fusion':  # a fusion the compiler left unnamed: its ops' name
      inner = (re.search(r'op_name="([^"]*)"', module.instructions[n].attrs)
               for n in module.order.get(module.called(ins), []))
      source = next((m for m in inner if m), None)
    found = [l for l in LAYERS if source and re.search(r'(^|/|\()' + l + r'(/|$)', source.group(1))]
    layer = found[-1] if found else ''
    kind = ins.op[:-len('-start')] if ins.op.endswith('-start') else ins.op
    if kind in KINDS or (ins.op == 'async-start' and module.called(ins) in inside) or (
        name in tpu_async and module.called(ins) in inside):
      runs = [name] if name in by_instruction else inside.get(module.called(ins), [])
      asynchronous = name in tpu_async or (ins.op.endswith('-start')
                                           and '"is_sync":true' not in ins.attrs)
      ops.append(Op(name, 'collective', layer=layer, collective=runs,
                    asynchronous=asynchronous))
    elif ins.op.endswith('-done') and ins.operands:
      ops.append(Op(name, 'wait', waits_for=ins.operands[0]))
    elif name in tpu_done:
      ops.append(Op(name, 'wait', waits_for=tpu_done[name]))
    elif ins.op in _FREE or ins.op.endswith('-start') or ins.op.endswith('-update'):
      ops.append(Op(name, 'free', layer=layer))
    else:
      category, flops = _instruction_flops(module, ins)
      result = shapes_of(ins.type)
      if ins.op == 'custom-call' and len(result) > 1:  # (result, scratch space)
        result = result[:1]
      written = float(sum(DTYPE_BYTES[d] * math.prod(s) for d, s in result))
      ops.append(Op(name, category or 'memory', flops=flops,
                    bytes=_read_bytes(module, ins) + written, layer=layer))
  return ops
