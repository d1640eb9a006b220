"""The HLO parser (alexnet_jax/program/hlo.py): the collectives of programs compiled here whose
collectives are known; every replica-group spelling and combined op; HLO text written here in the
forms XLA:GPU and the TPU compiler print (collectives attributed to layers, what
analysis.explain makes of them); and the ops of a compiled step with their FLOPs and memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from alexnet_jax.core import strategies
from alexnet_jax.program import analysis
from alexnet_jax.program import hlo
from alexnet_jax.program import ops as ops_lib


# --- Collectives of programs compiled here, and every replica-group spelling. ---

def compiled_collectives(fn, *args, num_devices=4):
  return hlo.parse_collectives(jax.jit(fn).lower(*args).compile().as_text(), num_devices)


def test_parser_on_known_collectives():
  mesh = strategies.make_mesh((2, 2), ('a', 'b'))

  def body(x, y):
    g = jax.lax.all_gather(x, 'b', axis=1, tiled=True)  # f32[4, 6] -> [4, 12] over 2 devices
    s = jax.lax.psum(y, ('a', 'b'))  # f32[3] over 4
    r = jax.lax.psum_scatter(g, 'a', scatter_dimension=1, tiled=True)  # [4, 12] -> [4, 6]
    p = jax.lax.ppermute(x, 'a', [(0, 1), (1, 0)])  # f32[4, 6]
    return g, s, r, p

  f = jax.shard_map(body, mesh=mesh, in_specs=(P('a', 'b'), P()),
                    out_specs=(P('a'), P(), P('a', 'b'), P('a', 'b')), check_vma=False)
  found = compiled_collectives(f, jnp.ones((8, 12)), jnp.ones(3))
  by_kind = {c.kind: c for c in found}
  assert sorted(by_kind) == ['all-gather', 'all-reduce', 'collective-permute', 'reduce-scatter']
  assert len(found) == 4
  ag, ar, rs, cp = (by_kind[k] for k in ('all-gather', 'all-reduce', 'reduce-scatter',
                                         'collective-permute'))
  assert (ag.shape, ag.group_size, ag.bytes_per_device) == ([4, 12], 2, 4 * 12 * 4 / 2)
  assert (ar.shape, ar.group_size, ar.bytes_per_device) == ([3], 4, 2 * 3 / 4 * 3 * 4)
  assert (rs.shape, rs.group_size, rs.bytes_per_device) == ([4, 6], 2, 4 * 6 * 4)
  assert (cp.shape, cp.bytes_per_device) == ([4, 6], 4 * 6 * 4)
  assert all(c.dtype == 'f32' and c.layer == '?' for c in found)  # no layer scope here


def test_parser_reads_every_replica_group_spelling_and_combined_ops():
  lines = [
      '%a = f32[8,4]{1,0} all-gather(%x), channel_id=1, replica_groups={{0,1,2,3}}, '
      'dimensions={0}, metadata={op_name="jit(f)/shard_map/fc6/all_gather"}',
      '%b = f32[8]{0} all-reduce(%y), replica_groups=[4,2]<=[8], to_apply=%add',
      "%c = bf16[2,2]{1,0} reduce-scatter(%z), replica_groups=mesh['x'=2,'y'=4] {'y'}, "
      'dimensions={0}',
      '%d = (f32[10]{0}, f32[]) all-reduce(%p, %q), replica_groups={{0,1}}, metadata={op_name='
      '"jit(f)/(transpose(jvp())/shard_map/conv2/psum_invariant:reduce_sum)"}',
      '%e = (f32[4]{0}, f32[8]{0}) all-gather-start(%r), replica_groups={}',
      '%f = f32[8]{0} all-gather-done(%e)']
  found = hlo.parse_collectives('\n'.join(lines), num_devices=8)
  assert [(c.kind, c.group_size) for c in found] == [
      ('all-gather', 4), ('all-reduce', 2), ('reduce-scatter', 4), ('all-reduce', 2),
      ('all-reduce', 2), ('all-gather', 8)]
  assert found[0].layer == 'fc6' and found[0].bytes_per_device == 8 * 4 * 4 * 3 / 4
  assert found[2].bytes_per_device == 3 * 2 * 2 * 2  # bf16, input 4x the result
  assert [c.layer for c in found[3:5]] == ['conv2', hlo.LOSS]
  assert [c.phase for c in found[3:5]] == ['backward', 'forward']
  assert found[3].combined == 2 and found[3].bytes_per_device == 40.0
  assert found[5].shape == [8] and found[5].bytes_per_device == 8 * 4 * 7 / 8


# --- Reading compilers' programs (HLO text written here, the forms XLA:GPU and TPU print). ---

GPU_LIKE = '''HloModule m, is_scheduled=true

%wrapped_concatenate_computation (param_0: f32[32], param_1: f32[726], param_2: f32[128]) -> f32[886] {
  %param_0 = f32[32]{0} parameter(0)
  %param_1 = f32[726]{0} parameter(1)
  %param_2 = f32[128]{0} parameter(2)
  ROOT %c = f32[886]{0} concatenate(%param_0, %param_1, %param_2), dimensions={0}
}

ENTRY %main (p0: f32[2,16], p1: f32[2,11,11,3]) -> f32[886] {
  %p0 = f32[2,16]{1,0} parameter(0), metadata={op_name="jit(f)/transpose(jvp())/shard_map/add_any"}
  %p1 = f32[2,11,11,3]{3,2,1,0} parameter(1)
  %p2 = f32[128]{0} parameter(2), metadata={op_name="jit(f)/jvp(jit(log_softmax))/reduce_max"}
  %b0 = f32[32]{0} bitcast(%p0)
  %b1 = f32[726]{0} bitcast(%p1)
  %wrapped_concatenate = f32[886]{0} fusion(%b0, %b1, %p2), kind=kLoop, calls=%wrapped_concatenate_computation
  %all-reduce-start = f32[886]{0} all-reduce-start(%wrapped_concatenate), channel_id=1, replica_groups=[2,4]<=[4,2]T(1,0), use_global_device_ids=true, backend_config={"collective_backend_config":{"is_sync":false}}
  %conv = f32[8,8]{1,0} custom-call(%p1), custom_call_target="__cudnn$convForward"
  %gemm = f32[8,8]{1,0} custom-call(%conv), custom_call_target="__cublas$gemm"
  %add = f32[8,8]{1,0} add(%gemm, %gemm)
  %all-reduce-done = f32[886]{0} all-reduce-done(%all-reduce-start)
  %conv2 = f32[8,8]{1,0} custom-call(%add), custom_call_target="__cudnn$convForward"
  %ag-start = (f32[4,8]{1,0}, f32[8,8]{1,0}) all-gather-start(%add), channel_id=2, replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}, metadata={op_name="jit(f)/jvp()/shard_map/Tower/fc7/all_gather"}, backend_config={"collective_backend_config":{"is_sync":true}}
  %ag-done = f32[8,8]{1,0} all-gather-done(%ag-start)
  ROOT %r = f32[886]{0} copy(%all-reduce-done)
}
'''

TPU_LIKE = '''HloModule m, is_scheduled=true

ENTRY %main (a: f32[2,16], b: f32[2,11,11,3,16], c: f32[]) -> f32[2,16] {
  %a = f32[2,16]{1,0} parameter(0)
  %b = f32[2,11,11,3,16]{4,3,2,1,0} parameter(1)
  %c = f32[] parameter(2)
  %all-reduce.1 = (f32[2,16]{1,0:T(2,128)}, f32[2,11,11,3,16]{4,3,2,1,0:T(8,128)}, f32[]) all-reduce(%a, %b, %c), channel_id=3, replica_groups=mesh['data'=2,'tower'=2] device_ids=([2,2]T(1,0)) {'data'}, use_global_device_ids=true, to_apply=%add, metadata={op_name="jit(f)/transpose(jvp())/shard_map/conv1/psum_invariant"}
  ROOT %g = f32[2,16]{1,0} get-tuple-element(%all-reduce.1), index=0
}
'''

LEAVES = {'conv1': [((2, 16), (2, 16)), ((2, 11, 11, 3, 16), (2, 11, 11, 3, 16))],
          'fc6': [((2, 128), (2, 128))]}


def test_a_gradient_concatenation_is_split_and_attributed_by_shape():
  found = hlo.parse_collectives(GPU_LIKE, 8, {'conv1': [((2, 16), (2, 16)),
                                                        ((2, 11, 11, 3), (2, 11, 11, 3))]})
  ar = [c for c in found if c.kind == 'all-reduce']
  assert [c.shape for c in ar] == [[32], [726], [128]]
  # 32 floats from add_any in the shard_map: conv1's bias gradient, by its size; 726 floats
  # with no name: conv1's kernel (2 x 11 x 11 x 3), by its size.
  assert [(c.layer, c.attributed_by) for c in ar[:2]] == [('conv1', 'shape')] * 2
  # The third is the loss's (its producer's name is outside the shard_map).
  assert ar[2].layer == hlo.LOSS
  # Groups: iota [2,4]<=[4,2]T(1,0): arange(8).reshape(4,2).T.reshape(2,4).
  assert ar[0].groups == np.arange(8).reshape(4, 2).T.reshape(2, 4).tolist()
  assert ar[0].group_size == 4
  assert ar[0].bytes_per_device == pytest.approx(2 * 3 / 4 * 32 * 4)
  # Asynchronous, with the convolution and the matrix product between its start and done.
  assert ar[0].asynchronous and ar[0].overlap_ops == 2
  ag = [c for c in found if c.kind == 'all-gather']
  assert len(ag) == 1 and ag[0].layer == 'fc7' and ag[0].shape == [8, 8]
  assert not ag[0].asynchronous and ag[0].overlap_ops == 0  # "is_sync": true
  assert ag[0].groups == [[0, 1], [2, 3], [4, 5], [6, 7]]
  assert hlo.Module(GPU_LIKE).heavy_ops() == 3


def test_a_tuple_all_reduce_named_after_one_layer_is_attributed_by_shape():
  found = hlo.parse_collectives(TPU_LIKE, 4, LEAVES)
  assert [(c.shape, c.layer, c.attributed_by) for c in found] == [
      ([2, 16], 'conv1', 'shape'), ([2, 11, 11, 3, 16], 'conv1', 'shape'),
      ([], hlo.LOSS, 'none')]
  # mesh['data'=2,'tower'=2] device_ids=[2,2]T(1,0), groups along 'data': built by hand.
  ids = np.arange(4).reshape(2, 2).T.reshape(2, 2)  # ids[data, tower]
  assert sorted(found[0].groups) == sorted([ids[:, t].tolist() for t in range(2)])
  assert all(c.combined == 3 for c in found)


def test_explanations_name_what_the_formula_lacks():
  found = hlo.parse_collectives(TPU_LIKE, 4, LEAVES)
  measured = hlo.bytes_by_layer(found)
  out = analysis.explain('data', found, measured, {'conv1': measured['conv1']}, 'float32')
  assert out['layers']['conv1']['status'] == 'equal' and not out['layers']['conv1']['notes']
  assert out['combined']['all-reduce.1']['arrays'] == 3
  # towers exchanges nothing at conv1: an all-reduce there is the compiler's own (named 'kinds').
  other = analysis.explain('towers', found, measured, {'conv1': 2 * measured['conv1']},
                           'float32', LEAVES)
  assert other['layers']['conv1']['status'] == 'explained'
  assert any(n.startswith('kinds') for n in other['layers']['conv1']['notes'])
  # The same kinds as the formula but twice the bytes by formula: nothing explains it.
  wrong = analysis.explain('data', found, measured, {'conv1': 2 * measured['conv1']}, 'float32',
                           LEAVES)
  assert wrong['layers']['conv1']['status'] == 'differs'
  assert any(n.startswith('unexplained') for n in wrong['layers']['conv1']['notes'])


def test_an_activation_gathered_in_bfloat16_is_named_and_counted_in_float32():
  text = TPU_LIKE.replace(
      "ROOT %g", '%ag = bf16[64,1024]{1,0} all-gather(%a), replica_groups={{0,1}}, dimensions={0}, '
      'metadata={op_name="jit(f)/jvp()/shard_map/Tower/fc6/all_gather"}\n  ROOT %g')
  found = [c for c in hlo.parse_collectives(text, 4, LEAVES) if c.layer == 'fc6']
  assert [(c.kind, c.dtype, c.shape) for c in found] == [("all-gather", "bf16", [64, 1024])]
  measured = hlo.bytes_by_layer(found)
  float32_bytes = 64 * 1024 * 4 / 2  # the same gather in float32, by the ring convention
  out = analysis.explain('towers', found, measured, {'fc6': float32_bytes}, 'float32', LEAVES)
  fc6 = out['layers']['fc6']
  assert measured['fc6'] == float32_bytes / 2 and fc6['status'] == 'explained'
  assert any(n.startswith('dtype') for n in fc6['notes'])


# --- Reading the ops of a compiled step. ---

GPU_STEP = '''HloModule m, is_scheduled=true

%gemm_computation (parameter_0: f32[128,9216], parameter_1: f32[2,9216,2048]) -> f32[128,2048] {
  %parameter_1 = f32[2,9216,2048]{2,1,0} parameter(1)
  %slice.1 = f32[1,9216,2048]{2,1,0} slice(%parameter_1), slice={[0:1], [0:9216], [0:2048]}
  %bitcast.1 = f32[9216,2048]{1,0} bitcast(%slice.1)
  %parameter_0 = f32[128,9216]{1,0} parameter(0)
  ROOT %dot.1 = f32[128,2048]{1,0} dot(%parameter_0, %bitcast.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(f)/jvp()/Tower.fc6_fc7/fc6/dot_general"}
}

%relu_computation (param_0: f32[128,55,55,48]) -> f32[128,55,55,48] {
  %param_0 = f32[128,55,55,48]{3,2,1,0} parameter(0)
  %zero = f32[] constant(0)
  %b = f32[128,55,55,48]{3,2,1,0} broadcast(%zero), dimensions={}
  ROOT %max = f32[128,55,55,48]{3,2,1,0} maximum(%param_0, %b)
}

ENTRY %main (x: f32[128,3,227,227], w: f32[48,3,11,11], k: f32[2,9216,2048], a: f32[128,9216], g: f32[128,48,55,55]) -> f32[128,2048] {
  %x = f32[128,3,227,227]{3,2,1,0} parameter(0)
  %w = f32[48,3,11,11]{3,2,1,0} parameter(1)
  %k = f32[2,9216,2048]{2,1,0} parameter(2)
  %a = f32[128,9216]{1,0} parameter(3)
  %g = f32[128,48,55,55]{3,2,1,0} parameter(4)
  %conv = (f32[128,48,55,55]{3,2,1,0}, u8[1024]{0}) custom-call(%x, %w), window={size=11x11 stride=4x4}, dim_labels=bf01_oi01->bf01, custom_call_target="__cudnn$convForward", metadata={op_name="jit(f)/jvp()/Tower.conv1_conv2/conv1/conv_general_dilated"}
  %gte = f32[128,48,55,55]{3,2,1,0} get-tuple-element(%conv), index=0
  %bwf = (f32[48,3,11,11]{3,2,1,0}, u8[0]{0}) custom-call(%x, %g), window={size=11x11 stride=4x4}, dim_labels=bf01_oi01->bf01, custom_call_target="__cudnn$convBackwardFilter"
  %bwi = (f32[128,3,227,227]{3,2,1,0}, u8[0]{0}) custom-call(%g, %w), window={size=11x11 stride=4x4}, dim_labels=bf01_oi01->bf01, custom_call_target="__cudnn$convBackwardInput"
  %relu = f32[128,55,55,48]{3,2,1,0} fusion(%gte), kind=kLoop, calls=%relu_computation
  %ar-start = f32[48,3,11,11]{3,2,1,0} all-reduce-start(%w), channel_id=1, replica_groups={{0,1}}, to_apply=%relu_computation, metadata={op_name="jit(f)/transpose(jvp())/shard_map/conv1/psum_invariant"}, backend_config={"collective_backend_config":{"is_sync":false}}
  %fc6 = f32[128,2048]{1,0} fusion(%a, %k), kind=kCustom, calls=%gemm_computation
  %ar-done = f32[48,3,11,11]{3,2,1,0} all-reduce-done(%ar-start)
  ROOT %out = f32[128,2048]{1,0} copy(%fc6)
}
'''


def test_ops_of_a_compiled_step_with_their_flops_and_memory():
  module = hlo.Module(GPU_STEP)
  collectives = hlo.parse_collectives(module, 2)
  ops = {o.name: o for o in ops_lib.step_ops(module, collectives)}
  forward = 2 * 128 * 48 * 55 * 55 * (3 * 11 * 11)  # 2 x output x (filter per output map)
  assert ops['conv'].category == 'conv' and ops['conv'].flops == forward
  assert ops['conv'].layer == 'conv1'
  # Both backward convolutions cost what the forward does.
  assert ops['bwf'].flops == forward and ops['bwi'].flops == forward
  # The forward reads input and filter and writes its output (not the scratch space).
  assert ops['conv'].bytes == 4 * (128 * 3 * 227 * 227 + 48 * 3 * 11 * 11 + 128 * 48 * 55 * 55)
  # The fc6 product inside a fusion: 2 x 128 x 2048 x 9216, reading the input, one tower's half
  # of the stacked kernel (through a slice), writing the output.
  assert ops['fc6'].category == 'matmul' and ops['fc6'].flops == 2 * 128 * 2048 * 9216
  assert ops['fc6'].bytes == 4 * (128 * 9216 + 9216 * 2048 + 128 * 2048)
  assert ops['fc6'].layer == 'fc6'
  # An elementwise fusion: read and written once.
  assert ops['relu'].category == 'memory' and ops['relu'].bytes == 2 * 4 * 128 * 55 * 55 * 48
  assert ops['out'].category == 'memory' and ops['out'].bytes == 2 * 4 * 128 * 2048
  assert ops['gte'].category == 'free' and ops['x'].category == 'free'
  # The asynchronous all-reduce: its start runs the collective parse_collectives lists, its
  # done waits for it.
  assert ops['ar-start'].category == 'collective' and ops['ar-start'].asynchronous
  assert ops['ar-start'].collective == ['ar-start']
  assert ops['ar-done'].category == 'wait' and ops['ar-done'].waits_for == 'ar-start'
  assert [c.instruction for c in collectives] == ['ar-start']


def test_a_tpu_convolution_fusion_is_counted_from_its_convolution():
  text = '''HloModule m, is_scheduled=true

%fused_conv (p0: bf16[8,32,32,64], p1: bf16[3,3,64,128]) -> bf16[8,32,32,128] {
  %p0 = bf16[8,32,32,64]{3,2,1,0} parameter(0)
  %p1 = bf16[3,3,64,128]{3,2,1,0} parameter(1)
  ROOT %c = bf16[8,32,32,128]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

ENTRY %main (x: bf16[8,32,32,64], w: bf16[3,3,64,128]) -> bf16[8,32,32,128] {
  %x = bf16[8,32,32,64]{3,2,1,0} parameter(0)
  %w = bf16[3,3,64,128]{3,2,1,0} parameter(1)
  ROOT %f = bf16[8,32,32,128]{3,2,1,0} fusion(%x, %w), kind=kOutput, calls=%fused_conv
}
'''
  (f,) = [o for o in ops_lib.step_ops(hlo.Module(text)) if o.name == 'f']
  assert f.category == 'conv' and f.flops == 2 * 8 * 32 * 32 * 128 * (3 * 3 * 64)
  assert f.bytes == 2 * (8 * 32 * 32 * 64 + 3 * 3 * 64 * 128 + 8 * 32 * 32 * 128)


def test_a_16_bit_reduction_widened_by_the_compiler_is_counted_in_16_bits():
  """XLA:CPU has no bfloat16 all-reduce: it rounds the operand to bf16 and back (here fused) and
  reduces in float32. Such an operand is counted at 2 bytes (dtype bf16, widened_to f32); a
  float32 operand of the same instruction that was never rounded stays 4 bytes."""
  text = '''HloModule m

%rounded (p0: f32[64,32]) -> f32[64,32] {
  %p0 = f32[64,32]{1,0} parameter(0)
  %to16 = bf16[64,32]{1,0} convert(%p0)
  ROOT %back = f32[64,32]{1,0} convert(%to16)
}

%sum (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add = f32[] add(%a, %b)
}

ENTRY %main (x: f32[64,32], y: f32[64,32]) -> (f32[64,32], f32[64,32]) {
  %x = f32[64,32]{1,0} parameter(0)
  %y = f32[64,32]{1,0} parameter(1)
  %f = f32[64,32]{1,0} fusion(%x), kind=kLoop, calls=%rounded
  ROOT %ar = (f32[64,32]{1,0}, f32[64,32]{1,0}) all-reduce(%f, %y), replica_groups={{0,1}}, to_apply=%sum_promoted, metadata={op_name="jit(f)/(transpose(jvp())/shard_map/fc7/psum_invariant:transpose(jvp())/shard_map/fc7/psum_invariant)"}
}
'''
  found = hlo.parse_collectives(text, 2)
  assert [(c.dtype, c.widened_to, c.bytes_per_device) for c in found] == [
      ('bf16', 'f32', 64 * 32 * 2.0), ('f32', '', 64 * 32 * 4.0)]
  out = analysis.explain('data', found[:1], hlo.bytes_by_layer(found[:1]),
                         {'fc7': 64 * 32 * 2.0}, 'float32', {'fc7': [((64, 32), (64, 32))]},
                         'bfloat16')
  assert out['layers']['fc7']['status'] == 'equal'
  assert any(n.startswith('widened') for n in out['layers']['fc7']['notes'])


# XLA:TPU's continuation fusion, in the form libtpu prints it: one all-gather run in steps. The
# start fusion, each fusion carrying it (computing meanwhile) and the done fusion call a
# computation holding a copy of the same all-gather; its u32[] flags are carried through.
_CARRY = '''%carry_comp{i} (x: f32[8,8], p0: bf16[2,4,8], p1: bf16[2,4,32], f: u32[]) -> (f32[8,8], bf16[2,4,8], bf16[2,4,32], u32[]) {{
  %x = f32[8,8]{{1,0}} parameter(0)
  %p0 = bf16[2,4,8]{{2,1,0}} parameter(1)
  %p1 = bf16[2,4,32]{{2,1,0}} parameter(2)
  %f = u32[] parameter(3)
  %all-gather.{n} = bf16[2,4,32]{{2,1,0}} all-gather(%p0), channel_id=1, replica_groups={{{{0,1,2,3}}}}, dimensions={{2}}, use_global_device_ids=true, metadata={{op_name="jit(f)/jvp()/shard_map/fc6/all_gather"}}
  %dot.{i} = f32[8,8]{{1,0}} dot(%x, %x), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}
  ROOT %t = (f32[8,8]{{1,0}}, bf16[2,4,8]{{2,1,0}}, bf16[2,4,32]{{2,1,0}}, u32[]) tuple(%dot.{i}, %p0, %all-gather.{n}, %f)
}}
'''
TPU_CONTINUATION = '''HloModule m, is_scheduled=true

%start_comp (p0: bf16[2,4,8]) -> (bf16[2,4,8], bf16[2,4,32], u32[]) {
  %p0 = bf16[2,4,8]{2,1,0} parameter(0)
  %all-gather.1 = bf16[2,4,32]{2,1,0} all-gather(%p0), channel_id=1, replica_groups={{0,1,2,3}}, dimensions={2}, use_global_device_ids=true, metadata={op_name="jit(f)/jvp()/shard_map/fc6/all_gather"}
  %flag = u32[] constant(0)
  ROOT %t = (bf16[2,4,8]{2,1,0}, bf16[2,4,32]{2,1,0}, u32[]) tuple(%p0, %all-gather.1, %flag)
}
''' + _CARRY.format(i=1, n=2) + _CARRY.format(i=2, n=3) + '''
%done_comp (p0: bf16[2,4,8], p1: bf16[2,4,32], f: u32[]) -> bf16[2,4,32] {
  %p0 = bf16[2,4,8]{2,1,0} parameter(0)
  %p1 = bf16[2,4,32]{2,1,0} parameter(1)
  %f = u32[] parameter(2)
  ROOT %all-gather.4 = bf16[2,4,32]{2,1,0} all-gather(%p0), channel_id=1, replica_groups={{0,1,2,3}}, dimensions={2}, use_global_device_ids=true, metadata={op_name="jit(f)/jvp()/shard_map/fc6/all_gather"}
}

ENTRY %main (w: bf16[2,4,8], x: f32[8,8]) -> bf16[2,4,32] {
  %w = bf16[2,4,8]{2,1,0} parameter(0)
  %x = f32[8,8]{1,0} parameter(1)
  %async-collective-start = (bf16[2,4,8]{2,1,0}, bf16[2,4,32]{2,1,0}, u32[]) fusion(%w), kind=kCustom, calls=%start_comp
  %s0 = bf16[2,4,8]{2,1,0} get-tuple-element(%async-collective-start), index=0
  %s1 = bf16[2,4,32]{2,1,0} get-tuple-element(%async-collective-start), index=1
  %s2 = u32[] get-tuple-element(%async-collective-start), index=2
  %fusion.1 = (f32[8,8]{1,0}, bf16[2,4,8]{2,1,0}, bf16[2,4,32]{2,1,0}, u32[]) fusion(%x, %s0, %s1, %s2), kind=kOutput, calls=%carry_comp1
  %a0 = f32[8,8]{1,0} get-tuple-element(%fusion.1), index=0
  %a1 = bf16[2,4,8]{2,1,0} get-tuple-element(%fusion.1), index=1
  %a2 = bf16[2,4,32]{2,1,0} get-tuple-element(%fusion.1), index=2
  %a3 = u32[] get-tuple-element(%fusion.1), index=3
  %fusion.2 = (f32[8,8]{1,0}, bf16[2,4,8]{2,1,0}, bf16[2,4,32]{2,1,0}, u32[]) fusion(%a0, %a1, %a2, %a3), kind=kOutput, calls=%carry_comp2
  %b1 = bf16[2,4,8]{2,1,0} get-tuple-element(%fusion.2), index=1
  %b2 = bf16[2,4,32]{2,1,0} get-tuple-element(%fusion.2), index=2
  %b3 = u32[] get-tuple-element(%fusion.2), index=3
  ROOT %async-collective-done = bf16[2,4,32]{2,1,0} fusion(%b1, %b2, %b3), kind=kCustom, calls=%done_comp
}
'''


def test_a_tpu_continuation_is_one_collective_however_many_fusions_carry_it():
  """Four copies of the all-gather in the text (start, two carriers, done), one collective: the
  ring's (g-1)/g of its bf16 result, once; asynchronous over the two matrix products."""
  module = hlo.Module(TPU_CONTINUATION)
  assert module.tpu_async_fusions() == {'async-collective-start': 'async-collective-done'}
  found = hlo.parse_collectives(module, 4, {'fc6': [((2, 4, 32), (2, 4, 8))]})
  assert [(c.kind, c.instruction, c.layer) for c in found] == [
      ('all-gather', 'all-gather.1', 'fc6')]
  assert found[0].bytes_per_device == 3 / 4 * 2 * 4 * 32 * 2
  assert found[0].asynchronous and found[0].overlap_ops == 2
  measured = hlo.bytes_by_layer(found)
  out = analysis.explain('fsdp', found, measured, {'fc6': 3 / 4 * 2 * 4 * 32 * 2}, 'bfloat16')
  assert out['layers']['fc6']['status'] == 'equal'
  assert not any(n.startswith('repeated') for n in out['layers']['fc6']['notes'])
