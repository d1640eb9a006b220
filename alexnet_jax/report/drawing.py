"""The Pillow parts of the paper's image grids (Fig. 3, Fig. 4 in paper/figures.py): the palette,
Pillow's default font, image tiles.

The line and bar charts (comms.png, plan.png, validation.png, curves.png) are drawn with
matplotlib, in charts.py; a report's files are written by write.py. Pillow is imported only by the
functions that draw with it.
"""

import io

import numpy as np

# Qualitative colours (matplotlib's tab10, as charts.COLOURS), for the image grids.
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
LINE_HEIGHT = 14  # of one line of Pillow's default font, with spacing


def png_bytes(image) -> bytes:
  """A PIL image encoded as PNG."""
  out = io.BytesIO()
  image.save(out, format='PNG')
  return out.getvalue()


def tile(pixels: np.ndarray, size: int):
  """An H x W x 3 uint8 array as a `size` x `size` PIL image (nearest neighbour when enlarging,
  so pixels stay visible; antialiased when shrinking)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.fromarray(np.asarray(pixels, np.uint8))
  resample = Image.NEAREST if size >= max(image.size) else Image.LANCZOS
  return image.resize((size, size), resample)


def fit_text(draw, text: str, width: float) -> str:
  """`text`, cut with '..' so it fits in `width` pixels of the PIL ImageDraw `draw`."""
  if draw.textlength(text) <= width:
    return text
  while text and draw.textlength(text + '..') > width:
    text = text[:-1]
  return text + '..'
