"""Published measurements of one collective (pods/collectives.py): the case format's refusals, the
nccl-tests conversions against hand computations, the replay of a hand-made case against the
cost model's formula worked by hand, every shipped case, and `plan --collectives`'s three files.

No accuracy is asserted (the model will change); docs/validation.md states today's errors."""

import json
import os
import subprocess
import sys

import pytest

from alexnet_jax.pods import collectives
from alexnet_jax.pods import costmodel
from alexnet_jax.pods import targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = '''title = "a hand-made case"
[source]
cite = "nowhere"
url = ""
checked = false
note = "made up for the test"
[hardware]
profile = "gpu-a100"
link = "inside"
[collective]
kind = "all-reduce"
group_size = 8
software = "nccl-tests all_reduce_perf"
[measured]
size_bytes = [1048576, 1073741824]
busbw = [36.22e9, 228.10e9]
'''

TORUS = '''title = "a hand-made torus case"
[source]
cite = "nowhere"
url = ""
checked = false
note = "made up for the test"
[hardware]
profile = "tpu-v5e"
link = "inside"
extents = [4]
slice_shape = [8, 4]
[collective]
kind = "all-gather"
group_size = 4
software = "XLA"
[measured]
size_bytes = [33554432]
time_seconds = [680e-6]
'''


def _write(tmp_path, text, name='case.toml'):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


# --- The format's refusals: each one line, naming the field. ---

REFUSALS = [
    (GOOD.replace('title = "a hand-made case"\n', ''), 'title: missing'),
    (GOOD.replace('checked = false', 'checked = "no"'), 'source.checked'),
    (GOOD.replace('"gpu-a100"', '"gpu-z9"'), 'hardware.profile'),
    (GOOD.replace('link = "inside"', 'link = "across"'), 'hardware.link'),
    (GOOD.replace('"all-reduce"', '"all-to-all"'), 'collective.kind'),
    (GOOD.replace('group_size = 8', 'group_size = 1'), 'collective.group_size'),
    (GOOD.replace('group_size = 8', 'group_size = 16'), 'collective.group_size'),
    (GOOD.replace('software = "nccl-tests all_reduce_perf"', 'software = ""'),
     'collective.software'),
    (GOOD.replace('[1048576, 1073741824]', '[1073741824, 1048576]'), 'measured.size_bytes'),
    (GOOD.replace('[1048576, 1073741824]', '[1048576, 0]'), 'measured.size_bytes[1]'),
    (GOOD.replace('busbw = [36.22e9, 228.10e9]', ''), 'measured.time_seconds: missing'),
    (GOOD.replace('busbw = [36.22e9, 228.10e9]', 'busbw = [36.22e9, 228.10e9]\nalgbw = [1e9, 2e9]'),
     'measured.busbw'),
    (GOOD.replace('[36.22e9, 228.10e9]', '[36.22e9]'), 'measured.busbw'),
    (GOOD.replace('[36.22e9, 228.10e9]', '[36.22e9, -1]'), 'measured.busbw[1]'),
    (GOOD.replace('busbw = ', 'bus_bw = '), 'measured: unknown key bus_bw'),
    (GOOD.replace('link = "inside"', 'link = "inside"\nextents = [8]'), 'hardware.extents'),
    (TORUS.replace('extents = [4]\n', ''), 'hardware.extents: missing'),
    (TORUS.replace('extents = [4]', 'extents = [2, 4]'), 'hardware.extents'),
    ('title = [', 'TOML'),
    (GOOD + '[measured.check]\nbusbw = [1e9, 2e9]\n', 'measured.check.busbw: repeats'),
    (GOOD + '[measured.check]\nalgbw = [1e9]\n', 'measured.check.algbw: 1 values for 2'),
    (GOOD + '[measured.check]\nalgbw = [1e9, -2e9]\n', 'measured.check.algbw[1]'),
    (GOOD + '[measured.check]\nbus_bw = [1e9, 2e9]\n', 'measured.check: unknown key bus_bw'),
    (GOOD.replace('link = "inside"', 'link = "inside"\nmembers = [0, 1]'), 'hardware.members'),
    (GOOD.replace('"gpu-a100"', '"gpu-v100-sxm2-cubemesh"').replace(
        'link = "inside"', 'link = "inside"\nmembers = [0, 1]'), 'hardware.members'),
    (GOOD.replace('"gpu-a100"', '"gpu-v100-sxm2-cubemesh"').replace(
        'link = "inside"', 'link = "inside"\nmembers = [0, 1, 2, 3, 4, 5, 6, 8]'),
     'hardware.members'),
    (GOOD.replace('"gpu-a100"', '"gpu-v100-sxm2-cubemesh"').replace(
        'link = "inside"', 'link = "inside"\nmembers = [0, 1, 2, 3, 4, 5, 6, 6]'),
     'hardware.members'),
    (GOOD.replace('software = "nccl-tests all_reduce_perf"',
                  'software = "x"\nalgorithm = "ring"'), 'collective.algorithm_source: missing'),
    (GOOD.replace('software = "nccl-tests all_reduce_perf"',
                  'software = "x"\nalgorithm = "rings"\nalgorithm_source = "y"'),
     'collective.algorithm'),
]


@pytest.mark.parametrize('text,field', REFUSALS)
def test_a_malformed_case_is_refused_in_one_line_naming_the_field(tmp_path, text, field):
  path = _write(tmp_path, text)
  with pytest.raises(collectives.CollectiveCaseError) as info:
    collectives.load(path)
  message = str(info.value)
  assert '\n' not in message, message
  assert message.startswith(f'{path}: '), message
  assert field in message, message


def test_a_check_column_loads_and_is_not_replayed(tmp_path):
  case = collectives.load(_write(tmp_path, GOOD + '[measured.check]\nalgbw = [0.0, 130.35e9]\n'))
  assert case.check == {'algbw': (0.0, 130.35e9)} and case.given == 'busbw'
  assert collectives.load(_write(tmp_path, GOOD, 'plain.toml')).check == {}


def test_the_good_cases_load(tmp_path):
  case = collectives.load(_write(tmp_path, GOOD))
  assert (case.kind, case.group_size, case.link, case.given) == ('all-reduce', 8, 'inside',
                                                                  'busbw')
  assert case.sizes == (1048576, 1073741824) and case.values == (36.22e9, 228.10e9)
  torus = collectives.load(_write(tmp_path, TORUS, 'torus.toml'))
  assert torus.extents == (4,) and torus.slice_shape == (8, 4) and torus.given == 'time_seconds'


def test_a_refusal_is_exit_2_from_the_command(tmp_path):
  cases = tmp_path / 'cases'
  cases.mkdir()
  _write(cases, GOOD.replace('group_size = 8', 'group_size = 1'))
  done = subprocess.run([sys.executable, '-m', 'alexnet_jax.plan', '--collectives',
                         f'--cases={cases}', f'--out={tmp_path / "out"}'], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  lines = [l for l in done.stderr.splitlines() if 'collective.group_size' in l]
  assert len(lines) == 1, done.stderr[-2000:]
  assert not (tmp_path / 'out').exists()


# --- The conversions (nccl-tests' doc/PERFORMANCE.md), by hand. ---

def test_bus_factors():
  assert collectives.bus_factor('all-reduce', 8) == 2 * 7 / 8 == 1.75
  assert collectives.bus_factor('all-gather', 8) == 7 / 8
  assert collectives.bus_factor('reduce-scatter', 4) == 3 / 4


def test_time_from_algbw_and_busbw():
  s = 1073741824  # 1 GiB
  # algbw = S / t: 1 GiB at 100 GB/s takes 10.737 ms.
  assert collectives.seconds('algbw', 100e9, s, 'all-reduce', 8) == pytest.approx(0.01073741824)
  # busbw = algbw x 2(n-1)/n: an all-reduce over 8 at busbw 175 GB/s is algbw 100 GB/s.
  assert collectives.seconds('busbw', 175e9, s, 'all-reduce', 8) == pytest.approx(0.01073741824)
  # all-gather over 4: busbw = algbw x 3/4; busbw 75 GB/s is algbw 100 GB/s.
  assert collectives.seconds('busbw', 75e9, s, 'all-gather', 4) == pytest.approx(0.01073741824)
  assert collectives.seconds('time_seconds', 0.5, s, 'reduce-scatter', 4) == 0.5
  t = 0.01073741824
  assert collectives.algbw(s, t) == pytest.approx(100e9)
  assert collectives.busbw(s, t, 'all-reduce', 8) == pytest.approx(175e9)
  assert collectives.busbw(s, t, 'reduce-scatter', 2) == pytest.approx(50e9)


def test_bytes_per_device_is_the_ring_convention_of_the_compiled_programs():
  s = 8 * 1024 * 1024
  # all-reduce: each device sends 2(n-1)/n of its buffer S.
  assert collectives.bytes_per_device('all-reduce', s, 8) == 2 * 7 / 8 * s
  # all-gather: nccl-tests' S is the gathered output; each device sends (n-1) shards of S/n.
  assert collectives.bytes_per_device('all-gather', s, 8) == 7 * (s / 8)
  # reduce-scatter: S is the whole input; each device sends (n-1) pieces of S/n.
  assert collectives.bytes_per_device('reduce-scatter', s, 4) == 3 * (s / 4)
  # So nccl-tests' busbw is bytes_per_device / t in each.
  for kind, n in (('all-reduce', 8), ('all-gather', 8), ('reduce-scatter', 4)):
    assert collectives.busbw(s, 1.0, kind, n) == pytest.approx(
        collectives.bytes_per_device(kind, s, n))


# --- The replay, against costmodel's formula worked by hand. ---

def test_a_switch_case_is_predicted_by_the_formula(tmp_path):
  case = collectives.load(_write(tmp_path, GOOD))
  result = collectives.predict_case(case, targets.load('gpu-a100'))
  big = result['points'][1]
  # gpu-a100 inside: bus_bandwidth 231e9, latency 3e-6; all-reduce over 8: 2 x 7 steps.
  sent = 1.75 * 1073741824
  predicted = sent / 231e9 + 14 * 3e-6
  measured = sent / 228.10e9  # busbw given: t = S x 1.75 / busbw
  assert big['bytes_per_device'] == pytest.approx(sent)
  assert big['predicted_seconds'] == pytest.approx(predicted)
  assert big['measured_seconds'] == pytest.approx(measured)
  assert big['measured_busbw'] == pytest.approx(228.10e9)
  assert big['predicted_busbw'] == pytest.approx(sent / predicted)
  assert big['error'] == pytest.approx(predicted / measured - 1)
  small = result['points'][0]
  assert small['predicted_seconds'] == pytest.approx(1.75 * 1048576 / 231e9 + 14 * 3e-6)


def test_a_torus_case_is_predicted_by_the_formula(tmp_path):
  case = collectives.load(_write(tmp_path, TORUS))
  point = collectives.predict_case(case, targets.load('tpu-v5e'))['points'][0]
  # v5e: an axis of 4 has no wraparound (wraparound_min_extent 16): a line, one link of
  # 45e9 B/s; an all-gather over 4 sends 3/4 of the output, 3 hops of 1 us.
  predicted = 0.75 * 33554432 / 45e9 + 3 * 1e-6
  assert point['predicted_seconds'] == pytest.approx(predicted)
  assert point['error'] == pytest.approx(predicted / 680e-6 - 1)
  assert point['measured_busbw'] == pytest.approx(0.75 * 33554432 / 680e-6)


def test_a_between_case_reads_the_between_link(tmp_path):
  text = GOOD.replace('link = "inside"', 'link = "between"').replace('group_size = 8',
                                                                      'group_size = 16')
  case = collectives.load(_write(tmp_path, text))
  ins = collectives.instruction(case, 1073741824)
  assert ins['crosses'] == 'between'
  # gpu-a100 between: 25e9, latency 5e-6; all-reduce over 16: 2 x 15 steps.
  assert costmodel.collective_seconds(ins, targets.load('gpu-a100')) == pytest.approx(
      2 * 15 / 16 * 1073741824 / 25e9 + 30 * 5e-6)


PAIR = GOOD.replace('"gpu-a100"', '"gpu-v100-sxm2-cubemesh"').replace(
    'group_size = 8', 'group_size = 2')


def test_a_case_names_its_devices_and_its_algorithm(tmp_path):
  # gpu-v100-sxm2-cubemesh: GPUs 0 and 3 share two NVLinks of 25 GB/s, 0 and 1 one; 5 us a step.
  # An all-reduce over 2 by ring: 2 steps of S/2 over the pair's links.
  S = 1073741824
  for members, links in (('[0, 3]', 2), ('[0, 1]', 1)):
    text = PAIR.replace('link = "inside"', f'link = "inside"\nmembers = {members}')
    case = collectives.load(_write(tmp_path, text, f'pair{links}.toml'))
    point = collectives.predict_case(case, targets.load(case.profile))['points'][-1]
    assert point['predicted_seconds'] == pytest.approx(2 * (S / 2 / (links * 25e9) + 5e-6))
  # The same pair by a parameter server (the CPU of socket 0, both GPUs on it behind PCIe 3.0
  # x16 = 15.75 GB/s, host memory 128 GB/s): each writes S, the CPU reads 2 S and writes S, each
  # reads S back; three steps.
  text = PAIR.replace('link = "inside"', 'link = "inside"\nmembers = [0, 3]').replace(
      'software = "nccl-tests all_reduce_perf"', 'software = "x"\n'
      'algorithm = "parameter_server"\nalgorithm_source = "made up"')
  case = collectives.load(_write(tmp_path, text, 'ps.toml'))
  assert (case.algorithm, case.members) == ('parameter_server', (0, 3))
  point = collectives.predict_case(case, targets.load(case.profile))['points'][-1]
  assert point['predicted_seconds'] == pytest.approx(2 * S / 15.75e9 + 3 * S / 128e9 + 3 * 5e-6)


# --- The shipped cases. ---

def test_every_shipped_case_loads_and_replays():
  cases = collectives.load_all()
  assert len(cases) >= 4
  assert [c.key for c in cases] == sorted(c.key for c in cases)
  result = collectives.replay(cases, log=lambda _: None)
  for case, c in zip(cases, result['cases']):
    assert case.profile in targets.known()
    assert case.cite and case.note and isinstance(case.checked, bool)
    assert len(c['points']) == len(case.sizes)
    for p in c['points']:
      assert p['measured_seconds'] > 0 and p['predicted_seconds'] > 0
      assert p['error'] == pytest.approx(p['predicted_seconds'] / p['measured_seconds'] - 1)


def test_the_command_writes_its_three_files(tmp_path):
  out = tmp_path / 'out'
  done = subprocess.run([sys.executable, '-m', 'alexnet_jax.plan', '--collectives',
                         f'--out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  for name in ('collectives.json', 'collectives.md', 'collectives.png'):
    assert (out / name).stat().st_size > 0, name
  result = json.loads((out / 'collectives.json').read_text())
  assert {c['key'] for c in result['cases']} == {c.key for c in collectives.load_all()}
  assert (out / 'collectives.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# --- The transcription of the shipped cases, against the columns the source also prints. ---

# Cases whose source prints time, algbw and busbw per row (nccl-tests): the replayed column and
# the two others are transcribed; these must carry the others as measured.check.
PRINTED_THREE = {'autodl_2x_rtx2080ti_pcie3_no_p2p_all_reduce',
                 'autodl_2x_rtx2080ti_pcie3_no_p2p_all_gather',
                 'coreweave_32_a100_infiniband_sharp_all_reduce',
                 'gcp_a3mega_2x8_h100_all_reduce', 'kalavai_2x_rtx4090_pcie_far_pair_all_reduce',
                 'kalavai_2x_rtx4090_pcie_near_pair_all_reduce',
                 'kalavai_4x_rtx4090_pcie_quad_all_reduce', 'konnase_8x_v100_sxm2_cubemesh_all_reduce',
                 'tinygrad_4x_rtx4090_pcie4_p2p_all_reduce'}


def test_each_case_agrees_with_the_other_columns_its_source_prints():
  cases = {c.key: c for c in collectives.load_all()}
  assert PRINTED_THREE <= set(cases)
  for key in PRINTED_THREE:
    assert set(cases[key].check) == {'algbw', 'busbw'}, key
  for case in (c for c in cases.values() if c.check):
    n = case.group_size
    # nccl-tests (doc/PERFORMANCE.md), written out here: algbw = S / t; busbw = algbw x
    # 2(n-1)/n for an all-reduce, x (n-1)/n for an all-gather or a reduce-scatter.
    factor = 2 * (n - 1) / n if case.kind == 'all-reduce' else (n - 1) / n
    assert case.given == 'time_seconds', case.key
    for i, (size, t) in enumerate(zip(case.sizes, case.values)):
      derived = {'algbw': size / t, 'busbw': size / t * factor}
      for field, printed in case.check.items():
        # printed in GB/s to 2 decimals (+-0.005e9), from a time printed to 4-5 digits
        assert abs(printed[i] - derived[field]) <= 0.0051e9 + 1e-3 * derived[field], (
            case.key, size, field, printed[i], derived[field])


# --- The targets (issue 30): every case within +-15 % at 1 MB and up, or no worse than today. ---

# Per case, the largest |error| at messages of 1 MiB and up on 2026-12-08 (docs/validation.md,
# "The second round of the communication model"), for the cases that miss the +-15 % target:
# each may not grow by more than 0.03. A case that meets the target is held to it.
TARGET = 0.15
NOT_YET = {
    'autodl_2x_rtx2080ti_pcie3_no_p2p_all_gather': 0.243,
    'autodl_2x_rtx2080ti_pcie3_no_p2p_all_reduce': 0.312,
    'azure_nd_a100_v4_all_reduce': 0.371,
    'azure_nd_h100_v5_all_reduce': 0.295,
    'azure_nd_h200_v5_all_reduce': 0.298,
    'coreweave_32_a100_infiniband_sharp_all_reduce': 3.628,
    'gcp_a3mega_2x8_h100_all_reduce': 0.832,
    'kalavai_2x_rtx4090_pcie_far_pair_all_reduce': 0.882,
    'kalavai_2x_rtx4090_pcie_near_pair_all_reduce': 0.867,
    'kalavai_4x_rtx4090_pcie_quad_all_reduce': 0.836,
    'konnase_8x_v100_sxm2_cubemesh_all_reduce': 0.210,
    'scaling_book_v5e_all_gather': 0.173,
    'tinygrad_4x_rtx4090_pcie4_p2p_all_reduce': 0.180,
}


def test_each_case_meets_the_target_or_does_not_get_worse():
  cases = collectives.load_all()
  result = collectives.replay(cases, log=lambda _: None)
  for c in result['cases']:
    # The error recomputed here from the measured and predicted times, not read from the replay.
    big = [abs(p['predicted_seconds'] / p['measured_seconds'] - 1) for p in c['points']
           if p['size_bytes'] >= 2 ** 20]
    assert big, c['key']
    bound = NOT_YET[c['key']] + 0.03 if c['key'] in NOT_YET else TARGET
    assert max(big) <= bound, (c['key'], max(big), bound)
