"""The project's charts, drawn with matplotlib: one place for their styling.

Every chart is a `matplotlib.figure.Figure` with its own Agg canvas (`figure`), so nothing needs
a display and no pyplot state is shared between charts, threads or tests. A chart's module
builds the Figure (comms.chart_figure, plan.chart_figure, validation.chart_figure,
figures.curves_figure) and encodes it with `png`; the tests read the Figure back (its axes'
scales, tick labels, legend entries and titles).

Conventions:
- Device counts on a log2 axis with a tick at each count of the data, labelled with the count
  (2, 4, 8, 24, 32: the counts, not their logarithms) (`device_axis`).
- Each series in its own colour, marker and line style, hollow markers getting smaller series
  after series, so series at the same points stay visible one inside the other; a series equal
  to an earlier one says so in the legend ("= towers"). Every chart with series has a legend.
- Every title says whether its numbers are PREDICTED (by the cost model) or measured (timed, or
  read from a compiled program); the callers write the titles.

The image grids of the paper's figures (Fig. 3, Fig. 4) stay in Pillow (drawing.py).
"""

import io
import math
from typing import Optional, Sequence

from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

Series = tuple[str, Sequence[float], Sequence[float]]  # (label, xs, ys)

DPI = 100  # a figure of W x H pixels is W / DPI x H / DPI inches
COLOURS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
           '#7f7f7f', '#bcbd22', '#17becf')  # matplotlib's tab10
MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '<', '>', 'h')
LINESTYLES = ('-', '--', '-.', ':', (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)),
              (0, (8, 2)), (0, (3, 3)), (0, (5, 1, 1, 1)))
TITLE_SIZE, LABEL_SIZE, TICK_SIZE, LEGEND_SIZE = 10, 9, 8, 8
SAME = 1e-3  # relative difference under which two series count as one (the legend says so)


def figure(width: int, height: int, rows: int = 1, columns: int = 1,
           **subplot_kw) -> tuple[Figure, list]:
  """A `width` x `height` pixel Figure on an Agg canvas and its `rows` x `columns` axes (a
  flat list, row by row). `subplot_kw` goes to Figure.subplots (sharex, width_ratios, ...)."""
  fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout='constrained')
  FigureCanvasAgg(fig)
  axes = fig.subplots(rows, columns, squeeze=False, **subplot_kw)
  return fig, list(axes.flat)


def png(fig: Figure) -> bytes:
  """The figure encoded as PNG, at its own size in pixels (matplotlib's Agg and libpng)."""
  out = io.BytesIO()
  fig.savefig(out, format='png', dpi=DPI)
  return out.getvalue()


def rgb(fig: Figure) -> np.ndarray:
  """The figure's pixels, H x W x 3 uint8."""
  canvas = fig.canvas
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def number(value: float, _=None) -> str:
  """A tick label: 0.25, 20, 1,500, 23,000, 1e-05."""
  if value == 0:
    return '0'
  if abs(value) >= 1000:
    return f'{value:,.0f}'
  if abs(value) < 1e-3:
    return f'{value:.0e}'
  return f'{value:g}'


def device_axis(ax, counts: Sequence[float], label: str = 'devices') -> None:
  """The x axis in device counts on a log2 scale, a tick labelled with each count."""
  counts = sorted({float(n) for n in counts})
  ax.set_xscale('log', base=2)
  ax.xaxis.set_major_locator(ticker.FixedLocator(counts))
  ax.xaxis.set_major_formatter(ticker.FixedFormatter([number(n) for n in counts]))
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  if counts:
    ax.set_xlim(counts[0] / 2 ** 0.3, counts[-1] * 2 ** 0.3)
  ax.set_xlabel(label, fontsize=LABEL_SIZE)


def log_y_axis(ax) -> None:
  """A log10 y axis labelled at 1, 2 and 5 times each power of ten, in plain numbers."""
  ax.set_yscale('log')
  ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(number))
  ax.yaxis.set_minor_locator(ticker.LogLocator(base=10, subs=tuple(range(1, 10))))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _same(a: Series, b: Series) -> bool:
  _, xa, ya = a
  _, xb, yb = b
  if list(xa) != list(xb) or len(ya) != len(yb) or not len(ya):
    return False
  return all(math.isclose(p, q, rel_tol=SAME, abs_tol=1e-12) for p, q in zip(ya, yb))


def lines(ax, title: str, series: Sequence[Series], x_label: str = 'step',
          y_label: Optional[str] = None, devices: bool = False, log_y: bool = False,
          x_range: Optional[tuple[float, float]] = None, markers: bool = True,
          empty: str = 'nothing logged yet', y_min: Optional[float] = None,
          ranges: Optional[dict[str, tuple[Sequence[float], Sequence[float]]]] = None) -> list:
  """Draws `series` ((label, xs, ys)) into `ax`: one colour, marker and line style each, the
  legend, the title at the left. `devices`: xs are device counts (`device_axis`); `log_y`: a
  log10 y axis (non-positive values left out); `y_min`: where the (linear) y axis starts, with
  a tenth of the range as headroom above the highest value. `ranges` (label: (lows, highs), one
  per x) draws the named series' range at each point as an error bar in its colour. Non-finite
  values are left out; an empty chart says `empty`. Returns the Line2D of each drawn series."""
  ax.set_title(title, fontsize=TITLE_SIZE, loc='left')
  ax.tick_params(labelsize=TICK_SIZE)
  if y_label:
    ax.set_ylabel(y_label, fontsize=LABEL_SIZE)
  keep = lambda y: math.isfinite(y) and (y > 0 or not log_y)
  drawn, artists, highest = [], [], -math.inf
  for label, xs, ys in series:
    points = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and keep(float(y))]
    if not points:
      continue
    twins = [s[0] for s in drawn if _same(s, (label, xs, ys))]
    shown = label + (f' (= {twins[0]})' if twins else '')
    px, py = zip(*points)
    highest = max(highest, *py)
    k = len(drawn)
    artist, = ax.plot(
        px, py, label=shown, color=COLOURS[k % len(COLOURS)],
        linestyle=LINESTYLES[k % len(LINESTYLES)] if len(points) > 1 else 'none',
        linewidth=1.6, alpha=0.9,
        marker=MARKERS[k % len(MARKERS)] if markers or len(points) == 1 else None,
        markersize=max(4.0, 10.0 - 1.5 * k), markerfacecolor='none', markeredgewidth=1.5,
        zorder=3 + k)
    if ranges and label in ranges:
      lows, highs = ranges[label]
      ax.errorbar([float(x) for x in xs], [float(y) for y in ys],
                  yerr=[[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]],
                  fmt='none', ecolor=artist.get_color(), elinewidth=1.2, capsize=4,
                  label=f'{label}, range', zorder=2 + k)
    drawn.append((label, xs, ys))
    artists.append(artist)
  if devices:
    device_axis(ax, sorted({float(x) for s in series for x in s[1]}), x_label)
  else:
    ax.set_xlabel(x_label, fontsize=LABEL_SIZE)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(number))
  if x_range is not None:
    ax.set_xlim(*x_range)
  if not artists:
    ax.text(0.02, 0.9, empty, transform=ax.transAxes, color='grey', fontsize=LABEL_SIZE)
    return artists
  if log_y:
    log_y_axis(ax)
  else:
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(number))
    if y_min is not None:
      ax.set_ylim(y_min, highest + 0.1 * (highest - y_min) if highest > y_min else y_min + 1)
  ax.grid(True, which='major', color='#e6e6e6', linewidth=0.8)
  ax.set_axisbelow(True)
  # Where it covers the fewest points, and see-through: a point under it still shows.
  ax.legend(fontsize=LEGEND_SIZE, loc='best', framealpha=0.7)
  return artists


def stacked_bars(ax, title: str, names: Sequence[str], parts: Sequence[str],
                 values: Sequence[Sequence[float]], x_label: str,
                 marks: Optional[tuple[str, Sequence[float]]] = None,
                 scale: float = 1.0, unit: str = '') -> None:
  """Horizontal bars, one per name (top to bottom), stacked by part (`values[i][j]`: name i,
  part j), the total written at each bar's end; `marks` (label, a value per name) draws a
  black tick on each bar (e.g. a formula's total). Values are divided by `scale` and written
  with `unit`. Every part is in the legend, below the figure's axes."""
  ax.set_title(title, fontsize=TITLE_SIZE, loc='left')
  ax.tick_params(labelsize=TICK_SIZE)
  rows = np.arange(len(names))
  left = np.zeros(len(names))
  for j, part in enumerate(parts):
    width = np.array([v[j] for v in values], float) / scale
    ax.barh(rows, width, left=left, height=0.6, color=COLOURS[j % len(COLOURS)], label=part,
            edgecolor='white', linewidth=0.5)
    left += width
  if marks is not None:
    label, at = marks
    ax.plot(np.asarray(at, float) / scale, rows, linestyle='none', marker='|', markersize=20,
            markeredgewidth=2.5, color='black', label=label, zorder=5)
  end = max(list(left) + ([a / scale for a in marks[1]] if marks else []) + [1e-12])
  reach = np.maximum(left, np.asarray(marks[1], float) / scale) if marks else left
  for row, total, x in zip(rows, left, reach):
    ax.text(x + end * 0.015, row, f'{total:.3g} {unit}'.strip(), va='center',
            fontsize=TICK_SIZE)
  ax.set_xlim(0, end * 1.2)
  ax.set_yticks(rows, labels=list(names))
  ax.set_ylim(len(names) - 0.5, -0.5)  # the first name at the top
  ax.set_xlabel(x_label, fontsize=LABEL_SIZE)
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(number))
  ax.grid(True, axis='x', color='#e6e6e6', linewidth=0.8)
  ax.set_axisbelow(True)
  # Below the chart, so it hides no bar; the parts in order, then the marks.
  handles, labels = ax.get_legend_handles_labels()
  order = sorted(range(len(labels)), key=lambda i: marks is not None and labels[i] == marks[0])
  ax.figure.legend([handles[i] for i in order], [labels[i] for i in order],
                   loc='outside lower center',
                   fontsize=LEGEND_SIZE, ncol=min(10, len(parts) + (marks is not None)),
                   frameon=False)


def bars(ax, title: str, names: Sequence[str], values: Sequence[Optional[float]],
         x_label: str, fmt: str = '{:.3g}', missing: str = 'not timed') -> None:
  """Horizontal bars, one per name (top to bottom), each value written at its end; None is a
  missing bar, marked `missing`."""
  ax.set_title(title, fontsize=TITLE_SIZE, loc='left')
  ax.tick_params(labelsize=TICK_SIZE)
  rows = np.arange(len(names))
  shown = [v if v is not None else 0.0 for v in values]
  ax.barh(rows, shown, height=0.6, color=COLOURS[7])
  end = max(shown + [1e-12])
  for row, v in zip(rows, values):
    ax.text((v or 0) + end * 0.02, row, fmt.format(v) if v is not None else missing,
            va='center', fontsize=TICK_SIZE)
  ax.set_xlim(0, end * 1.45)
  ax.set_yticks(rows, labels=list(names))
  ax.set_ylim(len(names) - 0.5, -0.5)  # the first name at the top
  ax.set_xlabel(x_label, fontsize=LABEL_SIZE)
  ax.grid(True, axis='x', color='#e6e6e6', linewidth=0.8)
  ax.set_axisbelow(True)
