"""The published AlexNet measurements as data: the case files, their reader's refusals, and the
two networks built to match published ones (checked like the paper's in test_model.py: the
parameter count and every shape against a hand computation from the published widths)."""

import math
import os
import subprocess
import sys

import pytest

from alexnet_jax.core import model as model_lib
from alexnet_jax.pods import costmodel
from alexnet_jax.pods import published
from alexnet_jax.pods import targets
from alexnet_jax.pods import validation
import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ('alexnet2012', 'krizhevsky2014', 'tf_benchmarks2017')


def cases() -> dict:
  return {c.key: c for c in published.load_all()}


# --- The shipped case files. ---

def test_every_shipped_case_loads_and_its_config_builds_the_published_network():
  found = cases()
  assert set(KEYS) <= set(found)
  assert list(found) == sorted(found)
  for case in found.values():
    assert published.network_matches(case) == [], case.key
    assert case.profile in targets.known()
    assert len(case.images_per_second) == len(case.devices)
    assert case.cite and case.url and case.note and isinstance(case.checked, bool)


def test_the_shipped_cases_say_what_was_read_from_the_source():
  found = cases()
  assert found['tf_benchmarks2017'].checked  # the benchmarks page and alexnet_model.py were read
  assert found['alexnet2012'].checked  # section 5's sentence, from a transcription of the text
  assert not found['krizhevsky2014'].checked  # Table 1 could not be read here
  assert 'could not be read' in found['krizhevsky2014'].note


def test_the_2012_paper_images_per_second_from_its_days():
  case = cases()['alexnet2012']
  x = case.extra
  images = x['epochs'] * x['images_per_epoch']
  assert images == 90 * 1_200_000
  assert case.low[0] == pytest.approx(images / (x['days_high'] * 86400), abs=0.05)  # 208.3
  assert case.high[0] == pytest.approx(images / (x['days_low'] * 86400), abs=0.05)  # 250
  middle = images / ((x['days_low'] + x['days_high']) / 2 * 86400)
  assert case.images_per_second[0] == pytest.approx(middle, abs=0.05)  # 227.3
  assert case.devices == (2,) and case.strategy == 'towers' and not case.calibrate
  assert case.profile == 'gtx580'


def test_krizhevsky2014_images_per_second_from_the_hours_and_speedups():
  case = cases()['krizhevsky2014']
  x = case.extra
  one = x['images_per_epoch'] * x['epochs'] / (x['hours'] * 3600)
  assert one == pytest.approx(1_281_167 * 90 / (98.05 * 3600))  # 326.66
  assert x['speedup'] == [1.0, 1.95, 3.74, 6.25]
  for ips, speedup in zip(case.images_per_second, x['speedup']):
    assert ips == pytest.approx(one * speedup, abs=0.05)
  fc128 = x['fc_batch_128']
  assert not fc128['replayed'] and fc128['why']
  assert fc128['speedup'] == [1.0, 1.93, 3.66, 6.16]
  for ips, speedup in zip(fc128['images_per_second'], fc128['speedup']):
    assert ips == pytest.approx(one * speedup, abs=0.05)
  assert case.devices == (1, 2, 4, 8) and case.strategy == 'hybrid' and case.calibrate
  assert case.batch_per_device == 128 and case.profile == 'gpu-k20-pcie'


def test_tf_benchmarks_figures_as_published():
  case = cases()['tf_benchmarks2017']
  assert case.images_per_second == (2987, 5658, 10509, 17822)
  assert case.devices == (1, 2, 4, 8) and case.strategy == 'data'
  assert case.batch_per_device == 512 and case.profile == 'gpu-p100-dgx1'
  assert case.network['num_classes'] == 1001 and not case.network['lrn']


def test_the_historical_profiles_load():
  k20 = targets.load('gpu-k20-pcie')
  assert k20.compiled_as == 'gpu-a100' and k20.devices_per_host == 8
  assert k20.inside['wiring'] == 'pcie' and k20.inside['peer_group'] == 4
  assert k20.inside['host_bandwidth'] > 0 and k20.numbers['fp32_matmul_flops'] == 3.52e12
  p100 = targets.load('gpu-p100-dgx1')
  assert p100.compiled_as == 'gpu-a100' and p100.devices_per_host == 8
  assert p100.numbers['fp32_matmul_flops'] == p100.numbers['peak_fp32_flops'] == 10.6e12
  assert p100.numbers['host_cpus_per_chip'] == 80 / 8
  for profile in (k20, p100):  # no bfloat16, no TF32 on Kepler or Pascal
    assert profile.numbers['peak_bf16_flops'] == profile.numbers['fp32_matmul_flops']
    for field in targets.NUMBERS + ('inside', 'between'):
      assert profile.sources.get(field, '').strip(), (profile.key, field)


def test_reading_a_case_imports_no_tensorflow():
  code = ('import sys; from alexnet_jax.pods import published; published.load_all(); '
          'print(any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == 'False'


# --- Refusals: one line naming the file and the field. ---

GOOD = '''title = "A run"
[source]
cite = "somewhere"
url = "https://example.org"
checked = false
note = "made up"
[hardware]
profile = "gpu-k20-pcie"
[network]
config = "configs/krizhevsky2014.py"
num_towers = 1
conv_features = [64, 192, 384, 256, 256]
fc_features = [4096, 4096]
lrn = true
image_size = 224
num_classes = 1000
dtype = "float32"
[run]
strategy = "hybrid"
batch_per_device = 128
calibrate = true
collective_algorithm = "ring"
algorithm_source = "made up"
[measured]
devices = [1, 2]
images_per_second = [100.0, 190.0]
'''


def write(tmp_path, text, name='case.toml'):
  path = tmp_path / name
  path.write_text(text)
  return path


def refusal(tmp_path, text) -> str:
  path = write(tmp_path, text)
  with pytest.raises(published.CaseError) as info:
    published.load(path)
  message = str(info.value)
  assert '\n' not in message
  assert str(path) in message
  return message


def test_a_good_case_loads(tmp_path):
  case = published.load(write(tmp_path, GOOD))
  assert case.key == 'case' and case.devices == (1, 2) and case.images_per_second == (100, 190)
  assert case.low is None and case.high is None and case.extra == {}
  assert published.network_matches(case) == []


@pytest.mark.parametrize('old,new,field', [
    ('cite = "somewhere"\n', '', 'source.cite'),
    ('[hardware]\nprofile = "gpu-k20-pcie"\n', '', 'hardware: missing'),
    ('title = "A run"\n', '', 'title'),
    ('checked = false', 'checked = "no"', 'source.checked'),
    ('batch_per_device = 128', 'batch_per_device = 12.8', 'run.batch_per_device'),
    ('batch_per_device = 128', 'batch_per_device = 0', 'run.batch_per_device'),
    ('num_towers = 1', 'num_towers = true', 'network.num_towers'),
    ('conv_features = [64, 192, 384, 256, 256]', 'conv_features = [64, 192]',
     'network.conv_features'),
    ('dtype = "float32"', 'dtype = "float64"', 'network.dtype'),
    ('devices = [1, 2]', 'devices = [2, 1]', 'measured.devices'),
    ('devices = [1, 2]', 'devices = [1, 1]', 'measured.devices'),
    ('devices = [1, 2]', 'devices = [0, 2]', 'measured.devices'),
    ('images_per_second = [100.0, 190.0]', 'images_per_second = [100.0]',
     'measured.images_per_second'),
    ('images_per_second = [100.0, 190.0]', 'images_per_second = [100.0, -1.0]',
     'measured.images_per_second'),
    ('strategy = "hybrid"', 'strategy = "pipeline"', 'run.strategy'),
    ('profile = "gpu-k20-pcie"', 'profile = "gpu-k10"', 'hardware.profile'),
    ('config = "configs/krizhevsky2014.py"', 'config = "configs/no_such_config.py"',
     'network.config'),
    ('devices = [1, 2]\nimages_per_second = [100.0, 190.0]',
     'devices = [1]\nimages_per_second = [100.0]', 'run.calibrate'),
    ('profile = "gpu-k20-pcie"', 'profile = ""', 'hardware.profile'),
    ('dtype = "float32"', 'dtype = "float16"', 'network.dtype'),  # a K20 has no float16 rate
    ('batch_per_device = 128', 'batch_per_device = 128\nglobal_batch = 256', 'run.global_batch'),
    ('batch_per_device = 128\n', '', 'run.batch_per_device'),
    ('batch_per_device = 128', 'global_batch = 255', 'run.global_batch'),
    ('batch_per_device = 128', 'global_batch = 0', 'run.global_batch'),
    ('collective_algorithm = "ring"\n', '', 'run.collective_algorithm'),
    ('collective_algorithm = "ring"', 'collective_algorithm = "allreduce"',
     'run.collective_algorithm'),
    ('algorithm_source = "made up"', 'algorithm_source = " "', 'run.algorithm_source'),
    ('algorithm_source = "made up"', 'algorithm_source = "made up"\n'
     'collective_granularity = "bucketed"', 'run.bucket_bytes'),  # a bucket size is needed
    ('algorithm_source = "made up"', 'algorithm_source = "made up"\nbucket_bytes = 1e6',
     'run.bucket_bytes'),  # and given only when bucketed
    ('algorithm_source = "made up"', 'algorithm_source = "made up"\n'
     'collective_granularity = "per_layer"', 'run.collective_granularity'),
    ('algorithm_source = "made up"\n', '', 'run.algorithm_source'),
])
def test_each_malformed_field_is_refused_by_name(tmp_path, old, new, field):
  assert old in GOOD
  message = refusal(tmp_path, GOOD.replace(old, new))
  assert field in message


def test_what_is_expected_is_said(tmp_path):
  assert 'towers, data, hybrid' in refusal(
      tmp_path, GOOD.replace('strategy = "hybrid"', 'strategy = "pipeline"'))
  assert 'gpu-k20-pcie' in refusal(
      tmp_path, GOOD.replace('profile = "gpu-k20-pcie"', 'profile = "gpu-k10"'))
  assert 'increasing' in refusal(tmp_path, GOOD.replace('devices = [1, 2]', 'devices = [2, 1]'))
  assert 'one per' in refusal(tmp_path, GOOD.replace('[100.0, 190.0]', '[100.0]'))


# --- The fields added to the format: a profile file, float16, a fixed global batch, the
# collective algorithm and its source, and what the replay does with [network]. ---

PROFILE = '''[my-p100]
name = "8 x P100, a profile file of the user's"
compile_as = "gpu-a100"
devices_per_host = 8
peak_bf16_flops = 10.6e12
peak_fp16_flops = 21.2e12
fp32_matmul_flops = 10.6e12
peak_fp32_flops = 10.6e12
memory_bytes = 16e9
memory_bandwidth = 732e9
host_cpus_per_chip = 10
inside = { name = "NVLink 1", wiring = "switch", bandwidth = 80e9, latency = 5e-6 }
between = { name = "EDR", bandwidth = 6.25e9, latency = 5e-6 }
'''


def test_hardware_profile_names_a_profile_file_relative_to_the_case_or_absolute(tmp_path):
  (tmp_path / 'machines').mkdir()
  profile = tmp_path / 'machines' / 'p100.toml'
  profile.write_text(PROFILE)
  case = published.load(write(tmp_path, GOOD.replace('"gpu-k20-pcie"', '"machines/p100.toml"')))
  assert case.profile == str(profile) and case.profile_written == 'machines/p100.toml'
  loaded = targets.load(case.profile)  # what the replay loads
  assert loaded.key == 'my-p100' and loaded.compiled_as == 'gpu-a100'
  case = published.load(write(tmp_path, GOOD.replace('"gpu-k20-pcie"', f'"{profile}"')))
  assert case.profile == str(profile)
  # A shipped profile keeps its name.
  assert published.load(write(tmp_path, GOOD)).profile == 'gpu-k20-pcie'


def test_a_missing_or_malformed_profile_file_is_refused_naming_the_field(tmp_path):
  message = refusal(tmp_path, GOOD.replace('"gpu-k20-pcie"', '"nowhere.toml"'))
  assert 'hardware.profile' in message and 'no such file' in message
  assert str(tmp_path / 'nowhere.toml') in message and 'gpu-k20-pcie' in message
  (tmp_path / 'bad.toml').write_text('[p\nname = 1\n')
  message = refusal(tmp_path, GOOD.replace('"gpu-k20-pcie"', '"bad.toml"'))
  assert 'hardware.profile' in message and 'TOML' in message
  (tmp_path / 'short.toml').write_text(PROFILE.replace('memory_bandwidth = 732e9\n', ''))
  message = refusal(tmp_path, GOOD.replace('"gpu-k20-pcie"', '"short.toml"'))
  assert 'hardware.profile' in message and 'memory_bandwidth' in message
  (tmp_path / 'two.toml').write_text(PROFILE + PROFILE.replace('[my-p100]', '[other]'))
  message = refusal(tmp_path, GOOD.replace('"gpu-k20-pcie"', '"two.toml"'))
  assert 'hardware.profile' in message and '2 tables' in message
  (tmp_path / 'folder.toml').mkdir()
  message = refusal(tmp_path, GOOD.replace('"gpu-k20-pcie"', '"folder.toml"'))
  assert 'hardware.profile' in message


def test_float16_needs_a_profile_with_a_float16_rate(tmp_path):
  float16 = GOOD.replace('dtype = "float32"', 'dtype = "float16"')
  message = refusal(tmp_path, float16)  # gpu-k20-pcie: Kepler has no float16 arithmetic
  assert 'network.dtype' in message and 'peak_fp16_flops' in message and 'gpu-k20-pcie' in message
  case = published.load(write(tmp_path, float16.replace('"gpu-k20-pcie"', '"gpu-p100-dgx1"')))
  assert case.network['dtype'] == 'float16'
  (tmp_path / 'p100.toml').write_text(PROFILE)
  assert published.load(write(tmp_path, float16.replace('"gpu-k20-pcie"', '"p100.toml"')))
  # The cost model's rate per dtype (costmodel.PEAK_FIELDS), and the field a profile lacks.
  p100, k20 = targets.load('gpu-p100-dgx1'), targets.load('gpu-k20-pcie')
  assert costmodel.compute_peak(p100, 'float16') == 21.2e12
  assert costmodel.compute_peak(p100, 'bfloat16') == costmodel.compute_peak(p100, 'float32')
  assert p100.sources['peak_fp16_flops'].strip()
  with pytest.raises(targets.TargetError, match='peak_fp16_flops'):
    costmodel.compute_peak(k20, 'float16')


def test_the_plan_refuses_float16_on_a_profile_without_its_rate_before_compiling(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.plan', '--config=configs/tiny.py',
       '--config.model.dtype=float16', '--target=gpu-k20-pcie', f'--out={tmp_path / "out"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  assert 'peak_fp16_flops: missing' in out.stderr and 'Traceback' not in out.stderr
  assert not (tmp_path / 'out').exists()


def test_a_fixed_global_batch_is_split_over_the_batch_shards(tmp_path):
  case = published.load(write(tmp_path, GOOD.replace('batch_per_device = 128',
                                                     'global_batch = 256')))
  assert case.global_batch == 256 and case.batch_per_device is None
  assert published.batch_per_replica(case, 2, 2) == 128
  assert published.batch_per_replica(case, 2, 1) == 256  # a strategy that does not split it
  with pytest.raises(published.CaseError, match='run.global_batch.*3 batch shards'):
    published.batch_per_replica(case, 3, 3)
  per_device = published.load(write(tmp_path, GOOD))
  assert per_device.global_batch is None
  assert published.batch_per_replica(per_device, 2, 2) == 128
  # Refusals name both fields, or the device count that does not divide the batch.
  both = refusal(tmp_path, GOOD.replace('batch_per_device = 128',
                                        'batch_per_device = 128\nglobal_batch = 256'))
  assert 'run.global_batch' in both and 'run.batch_per_device' in both
  neither = refusal(tmp_path, GOOD.replace('batch_per_device = 128\n', ''))
  assert 'missing' in neither and 'run.global_batch' in neither
  odd = refusal(tmp_path, GOOD.replace('batch_per_device = 128', 'global_batch = 255'))
  assert '255 is not divisible by 2 devices' in odd


def test_the_collective_algorithm_is_one_of_a_closed_set_with_its_source(tmp_path):
  message = refusal(tmp_path, GOOD.replace('"ring"', '"allreduce"'))
  assert 'run.collective_algorithm' in message
  assert ', '.join(published.ALGORITHMS) in message
  for algorithm in published.ALGORITHMS:
    case = published.load(write(tmp_path, GOOD.replace('"ring"', f'"{algorithm}"')))
    assert case.collective_algorithm == algorithm and case.algorithm_source == 'made up'
    assert algorithm in published.__doc__  # each one is described


def test_the_shipped_cases_state_their_collective_algorithm_and_its_source():
  found = cases()
  assert found['alexnet2012'].collective_algorithm == 'peer_to_peer'
  assert found['krizhevsky2014'].collective_algorithm == 'host_staged'
  assert found['tf_benchmarks2017'].collective_algorithm == 'ring'
  assert 'section 3.2' in found['alexnet2012'].algorithm_source
  assert 'reducepipeline.cu' in found['krizhevsky2014'].algorithm_source
  assert 'use_nccl' in found['tf_benchmarks2017'].algorithm_source
  for case in found.values():
    assert case.collective_algorithm in published.ALGORITHMS
    assert 'not verified' in case.algorithm_source.lower()  # what could not be checked is said


def test_the_replay_applies_the_published_dtype_and_nothing_else(tmp_path):
  bf16 = published.load(write(tmp_path, GOOD.replace('dtype = "float32"', 'dtype = "bfloat16"')))
  assert published.load_config(bf16).model.dtype == 'float32'  # the config as written
  assert published.network_matches(bf16) == [
      "dtype: published 'bfloat16', configs/krizhevsky2014.py builds 'float32'"]
  config = published.replay_config(bf16)
  assert config.model.dtype == 'bfloat16' and published.network_matches(bf16, config) == []
  assert config.model.conv_features == published.load_config(bf16).model.conv_features
  f16 = published.load(write(tmp_path, GOOD.replace('dtype = "float32"', 'dtype = "float16"')
                             .replace('"gpu-k20-pcie"', '"gpu-p100-dgx1"')))
  assert published.replay_config(f16).model.dtype == 'float16'
  for case in cases().values():  # the shipped cases: their configs' dtype, unchanged
    assert published.replay_config(case).model.dtype == case.network['dtype'] == 'float32'


def test_a_network_the_config_does_not_build_is_refused_before_any_compile(tmp_path, monkeypatch):
  text = (GOOD.replace('lrn = true', 'lrn = false')
          .replace('dtype = "float32"', 'dtype = "bfloat16"'))
  case = published.load(write(tmp_path, text))
  with pytest.raises(published.CaseError) as info:
    published.replay_config(case)
  message = str(info.value)
  assert '\n' not in message and str(case.path) in message
  assert 'network.lrn: published False, configs/krizhevsky2014.py builds True' in message
  assert 'dtype' not in message.split('expected')[0]  # the dtype is applied, not refused
  # The replay checks before it compiles or even makes a target's devices.
  calls = []
  monkeypatch.setattr(validation.targets_lib, 'devices', lambda *a, **k: calls.append(a))
  monkeypatch.setattr(validation.compile_lib, 'lower', lambda *a, **k: calls.append(a))
  good = published.load(write(tmp_path, GOOD, 'good.toml'))
  with pytest.raises(published.CaseError, match='network.lrn'):
    validation.replay([good, case], log=lambda *_: None)
  assert calls == []
  from alexnet_jax.runtime import command  # pylint: disable=g-import-not-at-top
  assert command.exit_code(info.value) == 2


def test_a_range_with_low_above_high_is_refused(tmp_path):
  text = GOOD + 'images_per_second_low = [120.0, 180.0]\nimages_per_second_high = [110.0, 200.0]\n'
  message = refusal(tmp_path, text)
  assert 'measured.images_per_second_low' in message and 'low <= high' in message
  one_sided = GOOD + 'images_per_second_low = [90.0, 180.0]\n'
  assert 'measured.images_per_second_high' in refusal(tmp_path, one_sided)
  outside = (GOOD + 'images_per_second_low = [101.0, 180.0]\n'
             'images_per_second_high = [110.0, 200.0]\n')
  assert 'outside the published range' in refusal(tmp_path, outside)
  fine = GOOD + 'images_per_second_low = [90.0, 180.0]\nimages_per_second_high = [110.0, 200.0]\n'
  case = published.load(write(tmp_path, fine))
  assert case.low == (90, 180) and case.high == (110, 200)


def test_a_toml_syntax_error_names_the_file_and_tomls_message(tmp_path):
  message = refusal(tmp_path, GOOD.replace('strategy = "hybrid"', 'strategy = hybrid'))
  assert 'TOML' in message and 'line' in message


def test_unknown_keys_are_named(tmp_path):
  message = refusal(tmp_path, GOOD.replace('[run]\n', '[run]\nstrategi = "data"\n'))
  assert 'run: unknown key strategi' in message
  message = refusal(tmp_path, 'year = 2014\n' + GOOD)
  assert 'top level' in message and 'year' in message
  message = refusal(tmp_path, GOOD + '[extras]\nx = 1\n')
  assert 'extras' in message


def test_other_measured_keys_are_kept_as_extra(tmp_path):
  case = published.load(write(tmp_path, GOOD + 'hours = 98.05\n[measured.series]\nx = [1, 2]\n'))
  assert case.extra == {'hours': 98.05, 'series': {'x': [1, 2]}}


def test_network_matches_names_each_difference(tmp_path):
  text = (GOOD.replace('lrn = true', 'lrn = false')
          .replace('fc_features = [4096, 4096]', 'fc_features = [2048, 2048]'))
  diffs = published.network_matches(published.load(write(tmp_path, text)))
  assert len(diffs) == 2
  assert any(d.startswith('lrn:') for d in diffs)
  assert any(d.startswith('fc_features:') and '[4096, 4096]' in d for d in diffs)


def test_load_all_reads_a_folder_sorted_by_key(tmp_path):
  write(tmp_path, GOOD, 'zeta.toml')
  write(tmp_path, GOOD, 'alpha.toml')
  (tmp_path / 'notes.txt').write_text('not a case')
  assert [c.key for c in published.load_all(str(tmp_path))] == ['alpha', 'zeta']
  with pytest.raises(published.CaseError):
    published.load_all(str(tmp_path / 'missing'))


# --- The two networks, by hand from the published widths (independent of model.py). ---

def hand_layers(convs, fcs, classes, pool5):
  """(kernel shape, bias size) per layer of a one-tower AlexNet: conv1 11x11/4 from RGB, conv2
  5x5, conv3-conv5 3x3, fc6 from pool5 x pool5 x conv5, fc7, fc8."""
  c1, c2, c3, c4, c5 = convs
  f6, f7 = fcs
  return {'conv1': ((11, 11, 3, c1), c1), 'conv2': ((5, 5, c1, c2), c2),
          'conv3': ((3, 3, c2, c3), c3), 'conv4': ((3, 3, c3, c4), c4),
          'conv5': ((3, 3, c4, c5), c5), 'fc6': ((pool5 * pool5 * c5, f6), f6),
          'fc7': ((f6, f7), f7), 'fc8': ((f7, classes), classes)}


def shapes(config):
  """A config's network, shapes only: parameter shapes and each layer's output per image."""
  net = model_lib.make_network(config.model, config.model.num_classes)
  params, outputs = reference.layer_shapes(net, config.image_size)
  return net, params, outputs


# tf_cnn_benchmarks' AlexNet (227 input, VALID conv1, no LRN, 1001 classes):
# 23,296 + 307,392 + 663,936 + 1,327,488 + 884,992 + 37,752,832 + 16,781,312 + 4,101,097.
TF_CNN_PARAMS = 61_842_345
# cuda-convnet2's one-GPU net (224 input, 64-192-384-256-256, 1000 classes):
# 23,296 + 307,392 + 663,936 + 884,992 + 590,080 + 37,752,832 + 16,781,312 + 4,097,000.
CONVNET2_PARAMS = 61_100_840


@pytest.mark.parametrize('key,convs,classes,size,sizes,total', [
    # conv1 / pool1 / pool2 / pool5 sizes: (227 - 11) / 4 + 1 = 55 -> 27 -> 13 -> 6;
    # 224: 1 + ceil((224 - 11) / 4) = 55 (cuda-convnet's rule) -> 27 -> 13 -> 6.
    ('tf_benchmarks2017', (64, 192, 384, 384, 256), 1001, 227, (55, 27, 13, 6), TF_CNN_PARAMS),
    ('krizhevsky2014', (64, 192, 384, 256, 256), 1000, 224, (55, 27, 13, 6), CONVNET2_PARAMS),
])
def test_the_published_networks_parameters_and_shapes_by_hand(key, convs, classes, size, sizes,
                                                               total):
  case = cases()[key]
  config = published.load_config(case)
  assert config.image_size == size and config.model.num_towers == 1
  conv1, pool1, pool2, pool5 = sizes
  assert (size + model_lib.conv1_padding(size) - 11) // 4 + 1 == conv1
  assert model_lib.conv1_padding(size) == (0 if size == 227 else 3)
  assert (conv1 - 3) // 2 + 1 == pool1 and (pool1 - 3) // 2 + 1 == pool2
  assert (pool2 - 3) // 2 + 1 == pool5 == model_lib.pool5_size(size, 3, 2)

  layers = hand_layers(convs, (4096, 4096), classes, pool5)
  assert sum(math.prod(k) + b for k, b in layers.values()) == total
  net, params, outputs = shapes(config)
  assert model_lib.param_count(net, size) == total
  for name, (kernel, bias) in layers.items():
    assert params[name]['kernel'].shape == (1,) + kernel, name
    assert params[name]['bias'].shape == (1, bias), name
  # Outputs: conv1 at its own size, conv2 at pool1's (5x5 pad 2 keeps it), conv3-conv5 at
  # pool2's (3x3 pad 1), fc6 reads pool5 x pool5 x conv5 (checked by its kernel above).
  assert outputs['conv1'] == (conv1, conv1, convs[0])
  assert outputs['conv2'] == (pool1, pool1, convs[1])
  for i, name in enumerate(('conv3', 'conv4', 'conv5')):
    assert outputs[name] == (pool2, pool2, convs[2 + i])
  assert outputs['fc6'] == (4096,) and outputs['fc7'] == (4096,) and outputs['fc8'] == (classes,)
  assert net.lrn == case.network['lrn']
