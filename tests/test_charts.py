"""The charts (report/charts.py, matplotlib), read back from their Figures: device-count axes on a
log2 scale ticked at the counts, a legend entry and a visible line for every series, a title
that says PREDICTED or measured, and the PNG at the figure's size."""

import math
import os
import struct
import sys

import pytest

from alexnet_jax import report
from alexnet_jax.report import charts
from alexnet_jax.perf import comms
from alexnet_jax.paper import figures
from alexnet_jax.pods import plan
from alexnet_jax.pods import validation
from alexnet_jax.program.hlo import LAYERS, LOSS

COUNTS = [2, 4, 8, 24]


def fake_plan() -> dict:
  """A plan's chart inputs: `data` and `fsdp` predicted identically (the case where one line
  hid another), `towers` at 2 devices only."""
  runs = []
  for name, counts in (('towers', [2]), ('data', COUNTS), ('fsdp', COUNTS),
                       ('hybrid', COUNTS)):
    for n in counts:
      per_device = {'towers': 900.0, 'data': 1000.0 / math.sqrt(n), 'fsdp': 1000.0 / math.sqrt(n),
                    'hybrid': 1200.0 / n}[name]
      step = 128 / per_device
      runs.append({'strategy': name, 'devices': n,
                   'predicted_images_per_second': {'with_overlap': per_device * n},
                   'predicted_step_seconds': {'no_overlap': step},
                   'predicted_communication_seconds': step * (0.1 + 0.02 * n),
                   'input_images_per_second': 1500.0 * n})
  return {'label': 'PREDICTED, not measured: a made-up pod', 'runs': runs}


def fake_validation() -> dict:
  case = lambda key, devices, published, low=None, high=None: {
      'key': key, 'devices': devices, 'calibrate': len(devices) > 1,
      'published_images_per_second': published, 'published_low': low, 'published_high': high,
      'before': {'predicted_images_per_second': [0.5 * p for p in published]},
      'after': {'predicted_images_per_second': [1.1 * p for p in published]}}
  return {'cases': [case('one_point', [2], [227.0], [208.0], [250.0]),
                    case('four_points', [1, 2, 4, 8], [300.0, 590.0, 1150.0, 2200.0])]}


def fake_comms() -> dict:
  by_layer = lambda scale: {layer: scale * (i + 1) * 1e5 for i, layer in enumerate(LAYERS)}
  entry = lambda scale, seconds: {
      'bytes_per_step_by_layer': by_layer(scale), 'bytes_per_step': sum(by_layer(scale).values()),
      'analytic_bytes_per_step': 1.01 * sum(by_layer(scale).values()), 'step_seconds': seconds}
  return {'devices': 4, 'batch_size': 32, 'platform': 'cpu', 'device_kind': 'cpu',
          'strategies': {'towers': entry(1.0, 0.5), 'data': entry(20.0, None)}}


def titles(fig) -> list[str]:
  return [ax.get_title(loc='left') for ax in fig.axes if ax.get_title(loc='left')]


def legend_texts(ax) -> list[str]:
  legend = ax.get_legend()
  assert legend is not None
  return [t.get_text() for t in legend.get_texts()]


def series_lines(ax) -> list:
  """The lines of the data series (not an error bar's caps)."""
  return [l for l in ax.get_lines() if not l.get_label().startswith('_')]


def assert_device_axis(ax, counts):
  assert ax.get_xscale() == 'log' and ax.xaxis.get_transform().base == 2
  assert list(ax.get_xticks()) == [float(n) for n in counts]
  assert [t.get_text() for t in ax.get_xticklabels()] == [str(n) for n in counts]
  low, high = ax.get_xlim()
  assert low < min(counts) and max(counts) < high  # no point on the frame


def png_size(data: bytes) -> tuple[int, int]:
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR'
  return struct.unpack('>II', data[16:24])


def test_plan_chart_counts_devices_and_shows_every_strategy():
  fig = plan.chart_figure(fake_plan())
  top, bottom = fig.axes
  assert 'PREDICTED' in fig.get_suptitle()
  assert all('PREDICTED' in t for t in titles(fig)) and len(titles(fig)) == 2
  for ax in (top, bottom):
    assert_device_axis(ax, COUNTS)
    lines = ax.get_lines()
    # One line per series, each in its own marker and line style.
    assert len({(l.get_marker(), str(l.get_linestyle())) for l in lines}) == len(lines)
    labels = legend_texts(ax)
    assert len(labels) == len(lines)
    assert labels[:2] == ['towers', 'data']
    # fsdp's values equal data's: the legend says so, and fsdp's markers are smaller, so both
    # show at the same points.
    assert labels[2] == 'fsdp (= data)'
    assert lines[2].get_markersize() < lines[1].get_markersize()
    assert lines[2].get_markerfacecolor() == 'none'
  assert legend_texts(top)[-1] == 'host input ceiling' and len(top.get_lines()) == 5
  towers = top.get_lines()[0]
  assert list(towers.get_xdata()) == [2.0] and towers.get_marker() not in (None, 'None', '')
  data = top.get_lines()[1]
  assert list(data.get_xdata()) == COUNTS  # the counts themselves, not log2 of them
  assert list(data.get_ydata()) == pytest.approx([1000 / math.sqrt(n) for n in COUNTS])
  assert png_size(plan.chart(fake_plan())) == (900, 760)


def test_plan_write_leaves_the_chart_out_without_matplotlib(tmp_path, monkeypatch):
  """plan.write on a machine without matplotlib (the lent GPU images): plan.json and plan.md,
  which says why plan.png is missing."""
  monkeypatch.setattr(plan, 'markdown', lambda p: '# plan\n')
  monkeypatch.delitem(sys.modules, 'alexnet_jax.report.charts')
  monkeypatch.delattr(report, "charts")
  for name in [m for m in sys.modules if m.split('.')[0] == 'matplotlib']:
    monkeypatch.setitem(sys.modules, name, None)
  monkeypatch.setitem(sys.modules, 'matplotlib', None)
  plan.write(fake_plan(), str(tmp_path / 'without'))
  assert sorted(os.listdir(tmp_path / 'without')) == ['plan.json', 'plan.md']
  assert 'plan.png not drawn' in open(tmp_path / 'without' / 'plan.md').read()
  monkeypatch.undo()
  monkeypatch.setattr(plan, 'markdown', lambda p: '# plan\n')
  plan.write(fake_plan(), str(tmp_path / 'with'))
  assert png_size(open(tmp_path / 'with' / 'plan.png', 'rb').read()) == (900, 760)


def test_validation_chart_sets_predicted_against_measured_on_log_axes():
  result = fake_validation()
  fig = validation.chart_figure(result)
  assert len(fig.axes) == 2
  for ax, case in zip(fig.axes, result['cases']):
    assert 'PREDICTED vs measured' in ax.get_title(loc='left')
    assert_device_axis(ax, case['devices'])
    assert ax.get_yscale() == 'log'
    labels = legend_texts(ax)
    assert labels[:3] == ['published (measured)',
                          'PREDICTED, before (first model, assumed efficiency)',
                          'PREDICTED, after (full model)']
    lines = series_lines(ax)
    assert [list(l.get_ydata()) for l in lines[:3]] == [
        case['published_images_per_second'], case['before']['predicted_images_per_second'],
        case['after']['predicted_images_per_second']]
  # The published range where the source gives one: an error bar from low to high.
  assert legend_texts(fig.axes[0])[3] == 'published (measured), range'
  assert 'range' not in ' '.join(legend_texts(fig.axes[1]))
  segments = fig.axes[0].collections[0].get_segments()
  assert [list(map(float, point)) for point in segments[0]] == [[2.0, 208.0], [2.0, 250.0]]
  assert png_size(validation.chart(result)) == (900, 660)


def test_comms_chart_stacks_the_compiled_bytes_by_layer():
  result = fake_comms()
  fig = comms.chart_figure(result)
  mb, seconds = fig.axes[:2]
  assert 'measured' in fig.get_suptitle() and all('measured' in t for t in titles(fig))
  assert [t.get_text() for t in mb.get_yticklabels()] == ['towers', 'data']
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == list(LAYERS) + [LOSS.replace('_metrics', ''), 'formula']
  # Each strategy's stacked bars end at its total MB (the patches, row by row).
  ends = {}
  for patch in mb.patches:
    row = round(patch.get_y() + patch.get_height() / 2)
    ends[row] = max(ends.get(row, 0.0), patch.get_x() + patch.get_width())
  for row, name in enumerate(['towers', 'data']):
    assert ends[row] == pytest.approx(result['strategies'][name]['bytes_per_step'] / 1e6)
  texts = [t.get_text() for t in seconds.texts]
  assert texts == ['0.500 s', 'not timed']
  width, height = png_size(comms.chart(result))
  assert width == 900 and height > 100


def test_curves_chart_is_measured_with_a_log_learning_rate_when_it_drops():
  metrics = []
  for step in range(0, 400, 20):
    metrics.append({'step': step, 'loss': 7 - step / 100,
                    'learning_rate': 0.01 * 0.1 ** (step // 200)})
    if step % 100 == 0:
      metrics.append({'step': step, 'val_top1': 0.5, 'val_top5': 0.8})
  fig = figures.curves_figure(metrics)
  loss, error, rate = fig.axes
  assert 'measured' in fig.get_suptitle() and all('measured' in t for t in titles(fig))
  assert legend_texts(error) == ['top-1', 'top-5']
  assert [list(l.get_ydata()) for l in error.get_lines()] == [[0.5] * 4, pytest.approx([0.2] * 4)]
  low, high = error.get_ylim()
  assert low == 0 and high > 0.5 * 1.05  # from 0, the highest error below the frame
  assert rate.get_yscale() == 'log' and loss.get_yscale() == 'linear'
  assert loss.get_xlim() == rate.get_xlim() and loss.get_xlim()[1] > 380  # shared, last step in
  constant = [dict(r, learning_rate=0.01) for r in metrics if 'loss' in r]
  assert figures.curves_figure(constant).axes[2].get_yscale() == 'linear'
  assert figures.draw_curves(metrics).size == figures.CURVES_SIZE
  assert figures.draw_curves([]).size == figures.CURVES_SIZE  # nothing logged: said, not a crash


def test_a_single_point_series_and_non_finite_values():
  fig, (ax,) = charts.figure(400, 300)
  lines = charts.lines(ax, 'measured', [('one', [8], [3.0]),
                                       ('gaps', [2, 4, 8], [1.0, math.nan, 2.0])],
                       x_label='devices', devices=True)
  assert lines[0].get_marker() not in (None, 'None', '') and lines[0].get_linestyle() == 'None'
  assert list(lines[1].get_xdata()) == [2.0, 8.0]
  assert_device_axis(ax, [2, 4, 8])
  assert png_size(charts.png(fig)) == (400, 300)
