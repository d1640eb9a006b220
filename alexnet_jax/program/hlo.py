"""Reading a compiled program's text: its collectives, the layer each belongs to, and its schedule.

Every compiler this project targets (XLA:CPU, XLA:GPU, the TPU compiler) prints the optimized
module in the same HLO text, but each rewrites the program's collectives its own way:

- it *combines* collectives of several layers into one instruction (a tuple of operands, or one
  operand concatenated from several gradients), and keeps the source name of only some of them;
- it *decomposes* one (an all-reduce into a reduce-scatter and an all-gather) or *adds* its own
  (collective-permutes that move the logits' shards for the loss);
- it makes them asynchronous (`all-gather-start` ... `all-gather-done`) and places other work
  between the two, or turns them back into synchronous ones.

So a collective is attributed to a layer by its source name (`jax.named_scope` of the strategy,
strategies.py) where the compiler kept one that names a single layer, else by matching its shape
to a parameter's (a gradient collective carries the parameter's shape, or its shard's), and its
group of devices is read in every spelling XLA uses, so that the link it crosses (inside a node or
slice, or between them) can be told from the devices it joins.

Bytes are counted per device per step, as a ring algorithm moves them over a group of g devices
holding S bytes: all-gather (g-1)/g * S of its result, reduce-scatter (g-1)/g * S of its input,
all-reduce 2 (g-1)/g * S, all-to-all (g-1)/g * S, collective-permute S.

A reduction of 16-bit floats is counted at 2 bytes an element even where the compiler widened
it: XLA:CPU has no bfloat16 or float16 all-reduce or reduce-scatter, so it rounds each device's
values to the 16-bit type, converts them back and reduces in float32 (the float32 operand of
such a collective is a convert of a bf16 or f16 array). Its `dtype` is then the 16-bit one, as
GPUs and TPUs, which reduce 16-bit floats natively, move it, and `widened_to` says 'f32'.
"""

import dataclasses
import math
import re
from typing import Optional, Sequence

import numpy as np

DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
               'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}
KINDS = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')
LOSS = 'loss_metrics'  # outside the strategy's shard_map: jit's own partitioning of the loss

_LINE = re.compile(r'^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.*?)\s'
                   r'(?P<op>[a-z][\w\-]*)\((?P<rest>.*)$')
_SHAPE = re.compile(r'\b(?P<dtype>' + '|'.join(DTYPE_BYTES) + r')\[(?P<dims>[\d,]*)\]')
_HEADER = re.compile(r'^(?P<entry>ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\((?P<params>.*)\)\s*->.*\{\s*$')
_HEAVY_CALL = re.compile(r'cudnn\$conv|gemm|matmul', re.IGNORECASE)


@dataclasses.dataclass
class Collective:
  """One operand of a collective of a compiled program, with the bytes one device sends for it."""
  kind: str
  shape: list  # of its result
  dtype: str
  group_size: int
  replica_groups: str
  bytes_per_device: float
  op_name: str
  layer: str  # conv1 .. fc8, loss_metrics, or '?' when it cannot be told
  phase: str  # forward or backward
  instruction: str  # its name in the HLO
  combined: int  # how many operands the compiler combined into that instruction
  attributed_by: str = 'op_name'  # 'op_name'; 'producer' (its input's name, where the compiler
  # made the collective and named it nothing); 'shape' (matched to a parameter); or 'none'
  asynchronous: bool = False  # a start/done pair the backend runs asynchronously
  overlap_ops: int = 0  # heavy ops (convolutions, matrix products) between its start and done
  groups: Optional[list] = None  # device ids (positions in the program's device list) per group
  widened_to: str = ''  # 'f32': 16-bit floats the compiler reduced in float32 (XLA:CPU)

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out.pop('groups')
    return out


@dataclasses.dataclass
class Instruction:
  name: str
  type: str
  op: str
  operands: list
  attrs: str
  computation: str
  operand_text: str = ''  # the operand list as written (a parameter's index)


def shapes_of(text: str) -> list[tuple[str, tuple[int, ...]]]:
  return [(m['dtype'], tuple(int(d) for d in m['dims'].split(',') if d))
          for m in _SHAPE.finditer(text)]


def _split_call(rest: str) -> tuple[str, str]:
  """'a, b), attrs' -> ('a, b', 'attrs'): the operand list closes at the first unmatched ')'."""
  depth = 0
  for i, ch in enumerate(rest):
    if ch in '({[':
      depth += 1
    elif ch in ')}]':
      if depth == 0:
        return rest[:i], rest[i + 1:]
      depth -= 1
  return rest, ''


class Module:
  """The instructions of an HLO module's text, by name and in each computation's (scheduled)
  order, and the parameter shapes of every computation."""

  def __init__(self, text: str):
    self.instructions: dict[str, Instruction] = {}
    self.order: dict[str, list[str]] = {}
    self.params: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    self.entry = ''
    current = ''  # instructions before any computation's header (a fragment) belong to ''
    self.order[current], self.params[current] = [], []
    for line in text.splitlines():
      header = _HEADER.match(line)
      if header:
        current = header['name']
        self.order[current] = []
        self.params[current] = shapes_of(header['params'])
        if header['entry']:
          self.entry = current
        continue
      m = _LINE.match(line)
      if not m:
        continue
      operands, attrs = _split_call(m['rest'])
      names = re.findall(r'%([\w.\-]+)', operands)
      self.instructions[m['name']] = Instruction(m['name'], m['type'], m['op'], names, attrs,
                                                 current, operands)
      self.order[current].append(m['name'])
    self._heavy_computations = self._computations_with_heavy_ops()

  def called(self, instruction: Instruction) -> Optional[str]:
    m = re.search(r'calls=%?([\w.\-]+)', instruction.attrs)
    return m.group(1) if m else None

  def _computations_with_heavy_ops(self) -> set:
    heavy = set()
    changed = True
    while changed:  # a fusion calling a computation that holds a convolution is heavy too
      changed = False
      for comp, names in self.order.items():
        if comp not in heavy and any(self._is_heavy(self.instructions[n], heavy) for n in names):
          heavy.add(comp)
          changed = True
    return heavy

  def _is_heavy(self, ins: Instruction, heavy: set) -> bool:
    if ins.op in ('convolution', 'dot'):
      return True
    if ins.op == 'custom-call':
      target = re.search(r'custom_call_target="([^"]*)"', ins.attrs)
      return bool(target and _HEAVY_CALL.search(target.group(1)))
    return ins.op == 'fusion' and self.called(ins) in heavy

  def is_heavy(self, name: str) -> bool:
    """A convolution or a matrix product (on its own, as a library call, or inside a fusion):
    the work a collective can hide behind."""
    return self._is_heavy(self.instructions[name], self._heavy_computations)

  def heavy_ops(self) -> int:
    return sum(self.is_heavy(n) for n in self.order.get(self.entry, []))

  def tpu_async_fusions(self) -> dict[str, str]:
    """XLA:TPU's asynchronous collective fusions ("continuation fusion", libtpu's
    --xla_tpu_enable_async_collective_fusion): {start: done}, by name in the entry computation.

    The TPU prints no `-start`/`-done` ops: a fusion named `async-collective-start*` (kind=kCustom)
    calls a computation holding the collective and returns its buffers and u32[] flags; the
    fusions scheduled after it carry those flags through (they compute while the collective runs)
    until a fusion named `async-collective-done*` returns the collective's result. Each done is
    paired with its start by following the u32[] flags back through the carrying fusions."""
    if not hasattr(self, '_tpu_async'):
      self._tpu_async, self._tpu_carriers = {}, set()
      entry = self.order.get(self.entry, [])
      starts = {n for n in entry if self.instructions[n].op == 'fusion'
                and n.startswith('async-collective-start')}
      for name in entry:
        if not (name.startswith('async-collective-done')
                and self.instructions[name].op == 'fusion'):
          continue
        todo, seen, found, carriers = list(self.instructions[name].operands), set(), None, {name}
        while todo:  # every carrier of the chain, not only those before the start is found
          o = todo.pop(0)
          if o in seen or o not in self.instructions:
            continue
          seen.add(o)
          ins = self.instructions[o]
          if o in starts:
            found = found or o
          elif ins.op == 'get-tuple-element' and ins.type.startswith('u32[]'):
            todo.extend(ins.operands)
          elif ins.op == 'fusion':  # a carrying fusion: follow its flags only
            carriers.add(o)
            todo.extend(x for x in ins.operands if x in self.instructions
                        and self.instructions[x].op == 'get-tuple-element'
                        and self.instructions[x].type.startswith('u32[]'))
        if found:
          self._tpu_async[found] = name
          self._tpu_carriers |= carriers
    return self._tpu_async

  def tpu_continuations(self) -> set[str]:
    """The computations of the fusions that carry a TPU asynchronous collective and of its done
    fusion (tpu_async_fusions): each holds a copy of the collective the start fusion runs."""
    self.tpu_async_fusions()
    return {self.called(self.instructions[n]) for n in self._tpu_carriers}


def expand_groups(attrs: str, num_devices: int) -> tuple[list[list[int]], str]:
  """The device groups of a collective, from any of XLA's spellings, and the spelling itself."""
  m = re.search(r'replica_groups=(\{\{[^=]*?\}\}|\{\})', attrs)
  if m:
    text = m.group(1)
    if text == '{}':
      return [list(range(num_devices))], text
    groups = [[int(d) for d in g.split(',') if d] for g in re.findall(r'\{([\d,]*)\}', text[1:-1])]
    return groups, text
  m = re.search(r'replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?', attrs)
  if m:  # iota: [groups, size] <= [dims] transposed by T(perm)
    dims = [int(d) for d in m.group(3).split(',')]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if m.group(4):
      ids = ids.transpose([int(p) for p in m.group(4).split(',')])
    return ids.reshape(int(m.group(1)), int(m.group(2))).tolist(), m.group(0).split('=', 1)[1]
  m = re.search(r"replica_groups=mesh\[(?P<axes>[^\]]*)\],?\s*(?:device_ids=\(\[(?P<ids>[\d,]+)\]"
                r"(?:T\((?P<perm>[\d,]+)\))?\)\s*)?\{(?P<names>[^}]*)\}", attrs)
  if m:  # mesh['a'=2,'b'=4] {'b'}: groups along the named axes
    axes = re.findall(r"'([^']+)'=(\d+)", m['axes'])
    shape = [int(v) for _, v in axes]
    if m['ids']:
      ids = np.arange(math.prod(shape)).reshape([int(d) for d in m['ids'].split(',')])
      if m['perm']:
        ids = ids.transpose([int(p) for p in m['perm'].split(',')])
      ids = ids.reshape(shape)
    else:
      ids = np.arange(math.prod(shape)).reshape(shape)
    names = re.findall(r"'([^']+)'", m['names'])
    inside = [i for i, (a, _) in enumerate(axes) if a in names]
    outside = [i for i in range(len(axes)) if i not in inside]
    size = math.prod(shape[i] for i in inside)
    groups = ids.transpose(outside + inside).reshape(-1, size).tolist()
    return groups, m.group(0).split('=', 1)[1]
  m = re.search(r'source_target_pairs=(\{[^=]*?\}\})', attrs)
  if m:
    pairs = [[int(a), int(b)] for a, b in re.findall(r'\{(\d+),(\d+)\}', m.group(1)[1:-1])]
    return [p for p in pairs if p[0] != p[1]] or [[0]], m.group(1)
  return [list(range(num_devices))], ''


def bytes_per_device(kind: str, result_bytes: int, g: int) -> float:
  """Ring-algorithm bytes one device sends (see the module docstring)."""
  if g <= 1:
    return 0.0
  return {'all-gather': (g - 1) / g * result_bytes,
          'reduce-scatter': (g - 1) * result_bytes,  # the input is g times the result
          'all-reduce': 2 * (g - 1) / g * result_bytes,
          'all-to-all': (g - 1) / g * result_bytes,
          'collective-permute': float(result_bytes)}[kind]


def layer_of(op_name: str) -> str:
  """The layer whose named scope a collective was traced in; LOSS outside any shard_map; '?'
  when the name holds no layer or several."""
  if 'shard_map' not in op_name:
    return LOSS
  found = [layer for layer in LAYERS if re.search(r'(^|/|\()' + layer + r'(/|$)', op_name)]
  return found[-1] if len(set(found)) == 1 else '?'


def split_op_names(op_name: str, count: int) -> list[str]:
  """The op names of the collectives XLA combined into one, in operand order.

  A combined op is named 'prefix/(name1:name2:...)'; anything else names all its operands.
  """
  at = 0 if op_name.startswith('(') else op_name.find('/(') + 1  # where '(' opens the list
  if count > 1 and op_name.endswith(')') and (at > 0 or op_name.startswith('(')):
    prefix, body = op_name[:max(at - 1, 0)], op_name[at + 1:-1]
    parts, depth, current = [], 0, ''
    for ch in body:
      if ch == ':' and depth == 0:
        parts.append(current)
        current = ''
        continue
      depth += (ch == '(') - (ch == ')')
      current += ch
    parts.append(current)
    if len(parts) == count:
      return [(prefix + '/' if prefix else '') + part for part in parts]
  return [op_name] * count


def _source_name(module: Module, name: str, through_fusions: bool = False) -> str:
  """The op name of the array `name` holds: its own, else (through bitcasts, copies and
  reshapes the compiler added, and with `through_fusions` the first input of unnamed fusions)
  its producer's."""
  passes = ('bitcast', 'copy', 'reshape') + (('fusion',) if through_fusions else ())
  for _ in range(6):
    ins = module.instructions.get(name)
    if ins is None:
      return ''
    found = re.search(r'op_name="([^"]*)"', ins.attrs)
    if found:
      return found.group(1)
    if ins.op not in passes or not ins.operands:
      return ''
    name = ins.operands[0]
  return ''


def _rounded_to(module: Module, name: str) -> Optional[str]:
  """'bf16' or 'f16' where the float32 array `name` is a convert of an array of that type (on its
  own or as the root of a fusion, through bitcasts, copies and reshapes): 16-bit floats widened
  to float32 for a reduction the backend cannot do in 16 bits (XLA:CPU). Else None."""
  for _ in range(8):
    ins = module.instructions.get(name)
    if ins is None or not ins.operands and ins.op != 'fusion':
      return None
    if ins.op == 'fusion':  # its root: the last instruction of the computation it calls
      body = module.order.get(module.called(ins) or '')
      if not body:
        return None
      name = body[-1]
    elif ins.op in ('bitcast', 'copy', 'reshape'):
      name = ins.operands[0]
    elif ins.op == 'convert':
      source = module.instructions.get(ins.operands[0])
      types = shapes_of(source.type) if source is not None else []
      return types[0][0] if len(types) == 1 and types[0][0] in ('bf16', 'f16') else None
    else:
      return None
  return None


def _operand_parts(module: Module, ins: Instruction) -> Optional[list[tuple[tuple, str]]]:
  """Where a collective's single operand is a concatenation of several arrays (XLA:GPU combines
  gradients that way), each array's shape and source op name, else None."""
  if len(ins.operands) != 1 or ins.operands[0] not in module.instructions:
    return None
  producer = module.instructions[ins.operands[0]]
  called = module.called(producer)
  if producer.op == 'concatenate' or (producer.op == 'fusion' and called
                                      and 'concatenate' in called):
    shapes = [shapes_of(module.instructions[o].type) for o in producer.operands
              if o in module.instructions]
    if len(shapes) == len(producer.operands) > 1 and all(len(x) == 1 for x in shapes):
      return [(x[0][1], _source_name(module, o)) for x, o in zip(shapes, producer.operands)]
  return None


def _window(module: Module, start: str) -> tuple[bool, int]:
  """(runs asynchronously, heavy ops scheduled between a collective's start and its done)."""
  ins = module.instructions[start]
  tpu = module.tpu_async_fusions()
  if start in tpu:  # a TPU asynchronous collective fusion (Module.tpu_async_fusions)
    order = module.order[ins.computation]
    begin, end = order.index(start), order.index(tpu[start])
    return True, sum(module.is_heavy(n) for n in order[begin + 1:end])
  if '"is_sync":true' in ins.attrs:
    return False, 0
  order = module.order[ins.computation]
  begin = order.index(start)
  for end in range(begin + 1, len(order)):
    other = module.instructions[order[end]]
    if other.op.endswith('-done') and start in other.operands:
      return True, sum(module.is_heavy(n) for n in order[begin + 1:end])
  return True, 0


def parse_collectives(hlo_text: 'str | Module', num_devices: int,
                      leaf_shapes: Optional[dict] = None) -> list[Collective]:
  """Every collective in an HLO module's text (async pairs counted once, at their start; a TPU
  continuation's copies once: Module.tpu_continuations).

  A collective the compiler combined from several is listed once per operand (per concatenated
  array where the operand is a concatenation), each attributed to its layer: by its own op name
  where the compiler kept one naming a single layer, else by matching its shape against
  `leaf_shapes` ({layer: [shapes of its parameters, whole and per device]}), taking each
  parameter at most once per instruction. `hlo_text` may be a Module already read.
  """
  module = hlo_text if isinstance(hlo_text, Module) else Module(hlo_text)
  out = []
  tpu_calls = {module.called(module.instructions[s]): s for s in module.tpu_async_fusions()}
  # XLA:TPU's continuation fusion runs one collective in steps: the start fusion, every fusion
  # that carries it and its done fusion each call a computation holding a copy of the whole
  # collective (up to 18 of one fsdp all-gather). Only the start's is the collective.
  copies = module.tpu_continuations()
  for comp, name in ((c, n) for c, names in module.order.items() for n in names):
    ins = module.instructions[name]
    kind = ins.op[:-len('-start')] if ins.op.endswith('-start') else ins.op
    if kind not in KINDS or comp in copies:
      continue
    shapes = shapes_of(ins.type)
    if ins.op.endswith('-start') and kind != 'all-reduce':
      # (operands, results[, contexts]): the results are the second half of the operand list.
      n = len(ins.operands)
      shapes = shapes[n:2 * n] if len(shapes) >= 2 * n else shapes[-n:]
    parts = _operand_parts(module, ins)
    flattened = bool(parts) and len(shapes) == 1 and sum(
        math.prod(s) for s, _ in parts) == math.prod(shapes[0][1])
    if flattened:
      shapes = [(shapes[0][0], s) for s, _ in parts]
    groups, spelling = expand_groups(ins.attrs, num_devices)
    g = 2 if kind == 'collective-permute' else len(groups[0])
    op_name = re.search(r'op_name="([^"]*)"', ins.attrs)
    op_name = op_name.group(1) if op_name else ''
    inherited = False
    if not op_name and len(ins.operands) == 1:  # a collective the compiler made: its input's name
      op_name = _source_name(module, ins.operands[0], through_fusions=True)
      inherited = bool(op_name)
    if ins.op.endswith('-start'):
      asynchronous, overlap = _window(module, name)
    elif ins.computation in tpu_calls:  # inside a TPU asynchronous collective fusion
      asynchronous, overlap = _window(module, tpu_calls[ins.computation])
    else:
      asynchronous, overlap = False, 0
    names = ([source for _, source in parts] if flattened
             else split_op_names(op_name, len(shapes)))
    shared = len(shapes) > 1 and len(set(names)) == 1  # one name kept for several operands
    used: set = set()
    widened = ([_rounded_to(module, o) if kind in ('all-reduce', 'reduce-scatter') else None
                for o in ins.operands] if not flattened and len(ins.operands) == len(shapes)
               else [None] * len(shapes))
    for (dtype, shape), source, narrow in zip(shapes, names, widened):
      widened_to = ''
      if dtype == 'f32' and narrow:
        dtype, widened_to = narrow, 'f32'
      named = layer_of(source)
      layer, how = named, 'producer' if inherited else 'op_name'
      if named == '?' or not source or shared:
        found = (_match_shape(shape, leaf_shapes or {}, used, exact=not flattened)
                 if 'shard_map' in source or not source or (shared and not flattened) else None)
        if found:
          layer, how = found, 'shape'
        elif shared and named not in ('?', LOSS) and math.prod(shape) > 1:
          layer, how = named, 'op_name'  # the name the compiler kept for all of them
        elif (source and 'shard_map' not in source) or math.prod(shape) <= 1:
          layer, how = LOSS, 'none'  # the loss's and the metrics' own values
        else:
          layer, how = '?', 'none'
      out.append(Collective(
          kind=kind, shape=list(shape), dtype=dtype, group_size=g, replica_groups=spelling,
          bytes_per_device=bytes_per_device(kind, DTYPE_BYTES[dtype] * math.prod(shape), g),
          op_name=source, layer=layer,
          phase='backward' if 'transpose(' in source else 'forward',
          instruction=name, combined=len(shapes), attributed_by=how,
          asynchronous=asynchronous, overlap_ops=overlap, groups=groups, widened_to=widened_to))
  return out


def _match_shape(shape: tuple, leaf_shapes: dict, used: set, exact: bool) -> Optional[str]:
  """The first layer (in the network's order) with a parameter of `shape` (`exact`: the same
  dimensions, size-1 ones aside; else the same size, for the flattened parts of a concatenation)
  not yet taken by another operand of the same instruction, or None."""
  squeeze = lambda s: tuple(d for d in s if d != 1)
  key = squeeze(shape) if exact else math.prod(shape)
  if math.prod(shape) <= 1:
    return None
  for layer in LAYERS:
    for i, candidates in enumerate(leaf_shapes.get(layer, [])):
      found = {squeeze(c) if exact else math.prod(c) for c in candidates}
      if (layer, i) not in used and key in found:
        used.add((layer, i))
        return layer
  return None


def bytes_by_layer(collectives: Sequence[Collective]) -> dict[str, float]:
  totals = {}
  for c in collectives:
    totals[c.layer] = totals.get(c.layer, 0.0) + c.bytes_per_device
  return totals
