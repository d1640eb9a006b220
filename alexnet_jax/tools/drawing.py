"""What the project's PNGs share: the palette, Pillow's default font, image tiles, line charts.

Drawn with Pillow, which the project already needs for its generated dataset, so no plotting
library is added. comms.py (comms.png) and figures.py (the paper's figures) draw with these.
"""

import io
import json
import math
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Qualitative colours, one per series / layer.
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
GREY = (150, 150, 150)
LINE_HEIGHT = 14  # of one line of Pillow's default font, with spacing


def png_bytes(image: Image.Image) -> bytes:
  """The image encoded as PNG."""
  out = io.BytesIO()
  image.save(out, format='PNG')
  return out.getvalue()


def tile(pixels: np.ndarray, size: int) -> Image.Image:
  """An H x W x 3 uint8 array as a `size` x `size` image (nearest neighbour when enlarging, so
  pixels stay visible; antialiased when shrinking)."""
  image = Image.fromarray(np.asarray(pixels, np.uint8))
  resample = Image.NEAREST if size >= max(image.size) else Image.LANCZOS
  return image.resize((size, size), resample)


def fit_text(draw: ImageDraw.ImageDraw, text: str, width: float) -> str:
  """`text`, cut with '..' so it fits in `width` pixels."""
  if draw.textlength(text) <= width:
    return text
  while text and draw.textlength(text + '..') > width:
    text = text[:-1]
  return text + '..'


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
  """About `count` round tick values (1, 2 or 5 x 10^k apart) covering [low, high]."""
  if not high > low:  # a constant: centre it
    half = (abs(low) or 1.0) / 2
    low, high = low - half, high + half
  raw = (high - low) / max(count - 1, 1)
  magnitude = 10 ** math.floor(math.log10(raw))
  step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
  first = math.floor(low / step) * step
  ticks = []
  value = first
  while value <= high + step * 1e-9:
    ticks.append(round(value, 12))
    value += step
  if ticks[-1] < high:
    ticks.append(round(value, 12))
  return ticks


def _tick_label(value: float) -> str:
  if value == 0:
    return '0'
  if abs(value) >= 1e4 or abs(value) < 1e-3:
    return f'{value:.0e}'
  return f'{value:g}'


def line_chart(image: Image.Image, box: tuple[int, int, int, int], title: str,
               series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
               x_range: Optional[tuple[float, float]] = None, x_label: str = 'step',
               markers: bool = False) -> None:
  """Draws a chart of `series` ((label, xs, ys), one colour each) into `box` of `image`.

  Linear axes with round ticks, the title at the top left, the legend at the top right.
  `x_range` lets stacked charts share their x axis; an empty chart says so.
  """
  draw = ImageDraw.Draw(image)
  left, top, right, bottom = box
  draw.text((left, top), title, fill='black')
  plot = (left + 60, top + LINE_HEIGHT + 6, right - 10, bottom - 2 * LINE_HEIGHT)
  x0, y0, x1, y1 = plot
  points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys) if math.isfinite(y)]
  if not points:
    draw.rectangle(plot, outline='black')
    draw.text((x0 + 10, y0 + 10), 'nothing logged yet', fill=GREY)
    return
  if x_range is None:
    x_range = (min(p[0] for p in points), max(p[0] for p in points))
  x_ticks = nice_ticks(x_range[0], x_range[1])
  y_ticks = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))
  xa, xb, ya, yb = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
  sx = lambda x: x0 + (x - xa) / (xb - xa) * (x1 - x0)
  sy = lambda y: y1 - (y - ya) / (yb - ya) * (y1 - y0)
  for t in x_ticks:
    draw.line((sx(t), y1, sx(t), y1 + 4), fill='black')
    label = _tick_label(t)
    draw.text((sx(t) - draw.textlength(label) / 2, y1 + 6), label, fill='black')
  for t in y_ticks:
    draw.line((x0 - 4, sy(t), x0, sy(t)), fill='black')
    draw.line((x0 + 1, sy(t), x1 - 1, sy(t)), fill=(235, 235, 235))
    label = _tick_label(t)
    draw.text((x0 - 8 - draw.textlength(label), sy(t) - 6), label, fill='black')
  draw.text(((x0 + x1) / 2 - draw.textlength(x_label) / 2, y1 + 6 + LINE_HEIGHT), x_label,
            fill='black')
  draw.rectangle(plot, outline='black')  # after the grid lines, which end on it
  legend_x = x1 - 8 - sum(draw.textlength(label) + 24 for label, _, _ in series)
  for i, (label, xs, ys) in enumerate(series):
    colour = COLOURS[i % len(COLOURS)]
    xy = [(sx(x), sy(y)) for x, y in zip(xs, ys) if math.isfinite(y)]
    if len(xy) > 1:
      draw.line(xy, fill=colour, width=2)
    if markers or len(xy) == 1:
      for x, y in xy:
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    draw.rectangle((legend_x, y0 + 8, legend_x + 10, y0 + 18), fill=colour)
    draw.text((legend_x + 14, y0 + 6), label, fill='black')
    legend_x += draw.textlength(label) + 24


def write_report(out_dir: str, stem: str, result: dict, markdown: str, png: bytes) -> None:
  """A report's three files: STEM.json (everything), STEM.md (the tables), STEM.png."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f'{stem}.json'), 'w') as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out_dir, f'{stem}.md'), 'w') as f:
    f.write(markdown)
  with open(os.path.join(out_dir, f'{stem}.png'), 'wb') as f:
    f.write(png)
