"""The paper's figures from any training run: Fig. 3, Fig. 4 and the training curves.

    python -m alexnet_jax.figures --workdir=DIR

reads DIR/config.json, DIR/metrics.jsonl and the parameters of the latest checkpoint in
DIR/checkpoints, and writes into DIR/figures/ (or --out):
- conv1_kernels.png  Fig. 3: the conv1 kernels, tower 1's above tower 2's, each contrast-
                     normalised, with each tower's colour specificity (`colour_specificity`);
- predictions.png    Fig. 4 left: validation images with their top-5 classes and probabilities,
                     the true class in red;
- neighbours.png     Fig. 4 right: validation images (left column) and the training images with
                     the nearest fc7 activations (Euclidean distance, both towers' fc7, no dropout);
- curves.png         training loss, validation top-1 / top-5 error and learning rate by step;
- figures.json       the numbers behind them (colour scores, predictions, neighbours).

The network runs on one device of this process (the checkpoint is read into host memory and
the two towers evaluated one after the other, as the one-device strategies do), so it needs no
mesh and works on any machine that can read the workdir; run it on one host of a pod.
"""

import json
from typing import Callable, Iterator, Optional

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from alexnet_jax.runtime import errors
from alexnet_jax.runtime import paths
from alexnet_jax.core import checkpointing
from alexnet_jax.report import drawing
from alexnet_jax.data import pipeline
from alexnet_jax.data import spec as data_spec
from alexnet_jax.core import config as config_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies
from alexnet_jax.report.drawing import LINE_HEIGHT

FIGURES = ('conv1_kernels.png', 'predictions.png', 'neighbours.png', 'curves.png')
KERNELS_PER_ROW = 16  # Fig. 3 shows a tower's 48 kernels as 3 rows of 16
KERNEL_SCALE = 4  # each kernel pixel drawn as 4 x 4
MARGIN = 10
SIDE_PANEL = 170  # the colour scores, right of the kernels
PREDICTION_TILE, PREDICTION_CELL_W = 128, 200
PREDICTIONS_PER_ROW = 4
NEIGHBOUR_TILE = 96
CURVES_SIZE = (900, 840)


class FiguresError(errors.Refused):
  """The workdir lacks what the figures need (config.json, a checkpoint), or a setting is bad."""


# ---------------------------------------------------------------------------------------------
# Reading a run.


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config, rebuilt from the config.json that train.train_and_evaluate wrote
  (completed from today's defaults, config.complete)."""
  path = paths.join(workdir, 'config.json')
  if not paths.isfile(path):
    raise FiguresError(
        f'{path} does not exist: {workdir} is not a training workdir. Train into it first: '
        f'python -m alexnet_jax.main --config=configs/quickstart.py --workdir={workdir}')
  return config_lib.complete(json.loads(paths.read_text(path)))


def restore_params(workdir: str, config: ml_collections.ConfigDict) -> tuple[dict, int]:
  """Both towers' parameters (stacked on a leading axis of 2, as numpy) of the latest checkpoint,
  and its step (read by checkpointing.restore_params, which knows the layout).

  Reads the parameters only (not the momentum) into host memory, whatever mesh saved them.
  """
  steps = checkpointing.saved_steps(workdir)
  if not steps:
    raise FiguresError(
        f'No checkpoint in {paths.join(workdir, "checkpoints")}: train first (python -m '
        f'alexnet_jax.main --config=... --workdir={workdir}); a run saves one every '
        f'config.checkpoint_every_steps={config.checkpoint_every_steps} steps and at its end.')
  _, params = checkpointing.restore_params(workdir, steps[-1])
  return params, steps[-1]


def read_metrics(workdir: str) -> list[dict]:
  """metrics.jsonl as a list of records (empty if the run has logged nothing yet)."""
  path = paths.join(workdir, 'metrics.jsonl')
  if not paths.isfile(path):
    return []
  return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# The numbers.


def pixel_space_kernels(kernel: np.ndarray, std_rgb) -> np.ndarray:
  """conv1 kernels [..., 3, N] as they act on pixels in [0, 255]: a config that divides the
  input by a per-channel std (`config.std_rgb`) scales each colour's weights by 1 / std."""
  kernel = np.asarray(kernel, np.float64)
  if std_rgb:
    kernel = kernel / np.asarray(std_rgb, np.float64)[:, None]
  return kernel


def colour_specificity(kernels: np.ndarray) -> np.ndarray:
  """Per kernel, the fraction of its variation that is colour rather than brightness.

  `kernels` is [H, W, 3, N] (flax's HWIO). For kernel w with per-pixel grey level
  g_p = mean_c w[p, c] and overall mean m = mean_{p,c} w[p, c]:

      chroma(w) = sum_{p,c} (w[p, c] - g_p)^2 / sum_{p,c} (w[p, c] - m)^2

  0 for a grey kernel (R = G = B at every pixel: it sees brightness only), 1 for a kernel whose
  grey level is flat (it responds to colour contrasts only). Unchanged by scaling the kernel or
  adding a constant, so runs, inits and towers compare. A kernel of i.i.d. noise (an untrained
  one) scores about 2/3; the paper's colour-agnostic tower should score well below its
  colour-specific one. A zero kernel scores 0.
  """
  w = np.asarray(kernels, np.float64)
  w = w.reshape(-1, 3, w.shape[-1])  # [pixels, RGB, N]
  colour = np.sum((w - w.mean(axis=1, keepdims=True)) ** 2, axis=(0, 1))
  total = np.sum((w - w.mean(axis=(0, 1), keepdims=True)) ** 2, axis=(0, 1))
  return np.where(total > 0, colour / np.where(total > 0, total, 1.0), 0.0)


def squared_distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
  """[Q, N] squared Euclidean distances, by differences (no cancellation: self-distance is 0)."""
  q = np.asarray(queries, np.float64)
  d = np.asarray(database, np.float64)
  return np.stack([np.sum((d - row) ** 2, axis=-1) for row in q])


def nearest_neighbours(queries: np.ndarray, database: np.ndarray,
                       k: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices [Q, k] into `database` of each query's k nearest rows, nearest first, and their
  Euclidean distances. Ties keep the lower index."""
  dist = squared_distances(queries, database)
  k = min(k, dist.shape[1])
  order = np.argsort(dist, axis=1, kind='stable')[:, :k]
  return order, np.sqrt(np.take_along_axis(dist, order, axis=1))


class NeighbourScan:
  """The k nearest database images of each query, kept while the database streams by in
  batches, so a scan of many training images holds only k images per query."""

  def __init__(self, queries: np.ndarray, k: int):
    self.queries = np.asarray(queries)
    self.k = k
    q = len(self.queries)
    self.index = np.zeros((q, 0), np.int64)
    self.distance = np.zeros((q, 0))
    self.images = [[] for _ in range(q)]
    self.labels = np.zeros((q, 0), np.int64)
    self.seen = 0

  def add(self, features: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
    """One batch of the database (its rows follow the previous batches' in the index)."""
    order, dist = nearest_neighbours(self.queries, features, self.k)
    index = np.concatenate([self.index, order + self.seen], axis=1)
    distance = np.concatenate([self.distance, dist], axis=1)
    keep = np.argsort(distance, axis=1, kind='stable')[:, :self.k]
    for i, row in enumerate(keep):
      candidates = self.images[i] + [images[j] for j in order[i]]
      self.images[i] = [candidates[j] for j in row]
    self.labels = np.take_along_axis(
        np.concatenate([self.labels, np.asarray(labels)[order]], axis=1), keep, axis=1)
    self.index = np.take_along_axis(index, keep, axis=1)
    self.distance = np.take_along_axis(distance, keep, axis=1)
    self.seen += len(features)


# ---------------------------------------------------------------------------------------------
# Running the network.


def display_images(images: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """Network inputs back to uint8 pixels: the normalisation of preprocess.normalize undone."""
  pixels = np.asarray(images, np.float32)
  if config.std_rgb:
    pixels = pixels * np.asarray(config.std_rgb, np.float32)
  pixels = pixels + np.asarray(config.mean_rgb, np.float32)
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def make_feature_fn(config: ml_collections.ConfigDict, device) -> Callable:
  """jit(params, images) -> (fc7 of both towers [B, 2 x fc7 width], class probabilities [B, C]),
  with no dropout, from the one-device forward of the strategies (both towers on `device`)."""
  net = run_lib.network(config, device.platform)

  def features(params, images):
    x = strategies.both_towers_convs(net, params, images)
    fc7 = strategies.both_towers_fc7(net, params, x, None)
    return fc7, jax.nn.softmax(strategies.both_towers_logits(net, params, fc7), axis=-1)
  return jax.jit(features)


def iterate_features(config: ml_collections.ConfigDict, data: pipeline.Input, params,
                     feature_fn: Callable, split: str, count: int) -> Iterator[dict]:
  """Batches of the first `count` images of `split` (centre crops, the evaluation
  preprocessing): {'image': uint8 pixels, 'label', 'fc7', 'probs'}, padding removed."""
  for batch in data.replace(eval_split=split, num_eval_examples=count).eval_batches(
      crops='center'):
    real = batch['mask'] > 0
    if not real.any():
      continue
    fc7, probs = feature_fn(params, batch['image'])
    yield {'image': display_images(batch['image'][real], config),
           'label': batch['label'][real], 'fc7': np.asarray(fc7)[real],
           'probs': np.asarray(probs)[real]}


def concatenate(batches: Iterator[dict]) -> dict:
  """One dict of arrays from a stream of batches."""
  batches = list(batches)
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


# ---------------------------------------------------------------------------------------------
# Drawing.


def kernels_size(per_tower: int) -> tuple[int, int]:
  """(width, height) of conv1_kernels.png for `per_tower` kernels in each tower."""
  pitch = 11 * KERNEL_SCALE + 2
  rows = -(-per_tower // KERNELS_PER_ROW)
  width = 2 * MARGIN + min(per_tower, KERNELS_PER_ROW) * pitch + SIDE_PANEL
  height = MARGIN + LINE_HEIGHT + 2 * (LINE_HEIGHT + rows * pitch + MARGIN) + LINE_HEIGHT
  return width, height


def draw_kernels(kernel: np.ndarray, scores: np.ndarray, step: int) -> Image.Image:
  """Fig. 3: `kernel` [2, 11, 11, 3, N] (tower 1, tower 2), each kernel stretched to the full
  0..255 range over its three channels together (so its colours keep their proportions);
  `scores` [2, N] from colour_specificity."""
  n = kernel.shape[-1]
  size = 11 * KERNEL_SCALE
  pitch = size + 2
  rows = -(-n // KERNELS_PER_ROW)
  image = Image.new('RGB', kernels_size(n), 'white')
  draw = ImageDraw.Draw(image)
  draw.text((MARGIN, MARGIN), f'conv1 kernels (11 x 11 x 3) at step {step}: tower 1 above, '
            'tower 2 below', fill='black')
  text_x = 2 * MARGIN + min(n, KERNELS_PER_ROW) * pitch
  for t in range(2):
    y0 = MARGIN + LINE_HEIGHT + t * (LINE_HEIGHT + rows * pitch + MARGIN)
    draw.text((MARGIN, y0 + 2), f'tower {t + 1}', fill='black')
    for i in range(n):
      w = kernel[t, ..., i]
      span = w.max() - w.min()
      pixels = (w - w.min()) / (span if span > 0 else 1.0) * 255
      x = MARGIN + (i % KERNELS_PER_ROW) * pitch
      y = y0 + LINE_HEIGHT + (i // KERNELS_PER_ROW) * pitch
      image.paste(drawing.tile(np.round(pixels), size), (x, y))
    lines = [f'tower {t + 1} colour specificity', f'  mean {scores[t].mean():.3f}',
             f'  median {np.median(scores[t]):.3f}']  # 3 lines fit beside one row of kernels
    for j, text in enumerate(lines):
      draw.text((text_x, y0 + LINE_HEIGHT + j * LINE_HEIGHT), text, fill='black')
  draw.text((MARGIN, image.height - MARGIN - LINE_HEIGHT + 2),
            "colour specificity: the share of a kernel's variance that is colour contrast, not "
            'brightness (0 grey, 1 colour only; i.i.d. noise ~0.667)', fill='black')
  return image


def predictions_size(count: int) -> tuple[int, int]:
  """(width, height) of predictions.png for `count` images."""
  cols = min(count, PREDICTIONS_PER_ROW)
  rows = -(-count // PREDICTIONS_PER_ROW)
  cell_h = LINE_HEIGHT + PREDICTION_TILE + 4 + 5 * LINE_HEIGHT + MARGIN
  return 2 * MARGIN + cols * PREDICTION_CELL_W, 2 * MARGIN + LINE_HEIGHT + rows * cell_h


def draw_predictions(images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                     class_names: list[str], step: int) -> Image.Image:
  """Fig. 4 left: each image, its true class above it, and its five most probable classes as
  bars below it (the true class's bar in red, the others blue)."""
  line = LINE_HEIGHT
  image = Image.new('RGB', predictions_size(len(images)), 'white')
  draw = ImageDraw.Draw(image)
  draw.text((MARGIN, MARGIN), f'Validation images, top-5 predictions at step {step} (true class '
            'in red)', fill='black')
  cell_h = line + PREDICTION_TILE + 4 + 5 * line + MARGIN
  bar_w = PREDICTION_CELL_W - 2 * MARGIN
  for i, (pixels, label, p) in enumerate(zip(images, labels, probs)):
    x = MARGIN + (i % PREDICTIONS_PER_ROW) * PREDICTION_CELL_W
    y = MARGIN + line + (i // PREDICTIONS_PER_ROW) * cell_h
    draw.text((x, y), drawing.fit_text(draw, class_names[label], bar_w), fill='black')
    image.paste(drawing.tile(pixels, PREDICTION_TILE), (x, y + line))
    top5 = np.argsort(-p, kind='stable')[:5]
    for r, c in enumerate(top5):
      by = y + line + PREDICTION_TILE + 4 + r * line
      colour = drawing.COLOURS[3] if c == label else (158, 202, 225)
      draw.rectangle((x, by + 1, x + bar_w * float(p[c]), by + line - 2), fill=colour)
      value = f'{p[c]:.2f}'
      value_w = draw.textlength(value)
      draw.text((x + 2, by), drawing.fit_text(draw, class_names[c], bar_w - value_w - 8),
                fill='black')
      draw.text((x + bar_w - value_w, by), value, fill='black')
  return image


def neighbours_size(queries: int, k: int) -> tuple[int, int]:
  """(width, height) of neighbours.png for `queries` rows of 1 + `k` images."""
  pitch = NEIGHBOUR_TILE + 6
  width = 2 * MARGIN + pitch * (1 + k) + MARGIN
  height = 2 * MARGIN + LINE_HEIGHT + queries * (pitch + 2 * LINE_HEIGHT)
  return width, height


def draw_neighbours(query_images: np.ndarray, query_labels: np.ndarray, scan: NeighbourScan,
                    class_names: list[str], step: int, k: int) -> Image.Image:
  """Fig. 4 right: each query (left column), then its nearest training images by fc7 distance,
  each captioned with its class (red: not the query's) and distance."""
  line = LINE_HEIGHT
  pitch = NEIGHBOUR_TILE + 6
  image = Image.new('RGB', neighbours_size(len(query_images), k), 'white')
  draw = ImageDraw.Draw(image)
  draw.text((MARGIN, MARGIN), f'Validation images (left) and the training images nearest in fc7 '
            f'at step {step} ({scan.seen} scanned; red: another class)', fill='black')
  for q, (pixels, label) in enumerate(zip(query_images, query_labels)):
    y = MARGIN + line + q * (pitch + 2 * line)
    draw.text((MARGIN, y + NEIGHBOUR_TILE + 2),
              drawing.fit_text(draw, class_names[label], NEIGHBOUR_TILE), fill='black')
    image.paste(drawing.tile(pixels, NEIGHBOUR_TILE), (MARGIN, y))
    for j, (found, found_label, dist) in enumerate(zip(scan.images[q], scan.labels[q],
                                                       scan.distance[q])):
      x = 2 * MARGIN + (1 + j) * pitch
      image.paste(drawing.tile(found, NEIGHBOUR_TILE), (x, y))
      colour = 'black' if found_label == label else drawing.COLOURS[3]
      text = drawing.fit_text(draw, class_names[found_label], NEIGHBOUR_TILE)
      draw.text((x, y + NEIGHBOUR_TILE + 2), text, fill=colour)
      draw.text((x, y + NEIGHBOUR_TILE + 2 + line), f'distance {dist:.3g}', fill=colour)
  return image


def curves_figure(metrics: list[dict]):
  """curves.png's Figure: the measured training loss, validation top-1 / top-5 error (1 - the
  logged accuracies) and the learning rate logged with them, against step, on a shared step
  axis (the learning rate on a log axis when it falls by 4x or more)."""
  from alexnet_jax.report import charts  # pylint: disable=g-import-not-at-top
  train = [r for r in metrics if 'loss' in r]
  evals = [r for r in metrics if 'val_top1' in r]
  column = lambda records, key, f=lambda v: v: ([r['step'] for r in records],
                                                 [f(r[key]) for r in records])
  steps = [r['step'] for r in metrics]
  x_range = (0, max(steps) * 1.02) if steps else None  # room for the last step's markers
  rates = [r['learning_rate'] for r in train if r.get('learning_rate', 0) > 0]
  fig, axes = charts.figure(*CURVES_SIZE, 3, sharex=True)
  fig.suptitle('training curves, measured', fontsize=charts.TITLE_SIZE, x=0.01, ha='left')
  panels = [
      ('training loss, measured (mean over the logged steps)', [('loss', *column(train, 'loss'))],
       False, False),
      ('validation error, measured (1 - accuracy)',
       [('top-1', *column(evals, 'val_top1', lambda v: 1 - v)),
        ('top-5', *column(evals, 'val_top5', lambda v: 1 - v))], True, False),
      ('learning rate, as logged with the measured steps',
       [('learning rate', *column(train, 'learning_rate'))], False,
       bool(rates) and max(rates) >= 4 * min(rates))]
  for i, (ax, (title, series, markers, log_y)) in enumerate(zip(axes, panels)):
    charts.lines(ax, title, series, x_label='step' if i == len(axes) - 1 else '',
                 x_range=x_range, markers=markers, log_y=log_y, y_min=0 if i == 1 else None)
  return fig


def draw_curves(metrics: list[dict]) -> Image.Image:
  """curves.png (curves_figure, drawn with matplotlib) as an image of CURVES_SIZE."""
  from alexnet_jax.report import charts  # pylint: disable=g-import-not-at-top
  return Image.fromarray(charts.rgb(curves_figure(metrics)))


# ---------------------------------------------------------------------------------------------
# The job.


def make_figures(workdir: str, out_dir: Optional[str] = None, data_dir: Optional[str] = None,
                 num_predictions: int = 8, num_queries: int = 5, num_neighbours: int = 6,
                 num_train_images: int = 1000) -> dict:
  """Writes the four PNGs and figures.json into `out_dir` (default DIR/figures) and returns
  what figures.json holds. `data_dir` overrides the run's tfds data dir (config.data_dir);
  `num_train_images` is how many training images (the first, in split order) the neighbour
  search scans. Reads and checks everything before writing anything."""
  for name, value in (('num_predictions', num_predictions), ('num_queries', num_queries),
                      ('num_neighbours', num_neighbours), ('num_train_images', num_train_images)):
    if value < 1:
      raise FiguresError(f'{name}={value}: use a positive number.')
  workdir = paths.absolute(workdir)
  out_dir = out_dir or paths.join(workdir, 'figures')
  config = load_config(workdir)
  if data_dir is not None:
    config.data_dir = data_dir
  params, step = restore_params(workdir, config)
  metrics = read_metrics(workdir)
  data = pipeline.open(data_spec.from_config(config)).prepare()
  class_names = list(data.builder.info.features['label'].names)

  kernel = pixel_space_kernels(params['conv1']['kernel'], config.std_rgb)
  scores = np.stack([colour_specificity(kernel[t]) for t in range(2)])

  device = jax.devices()[0]
  device_params = jax.device_put(params, device)
  feature_fn = make_feature_fn(config, device)
  val = concatenate(iterate_features(config, data, device_params, feature_fn,
                                     config.eval_split, max(num_predictions, num_queries)))
  preds, queries = slice(0, num_predictions), slice(0, num_queries)
  scan = NeighbourScan(val['fc7'][queries], num_neighbours)
  for batch in iterate_features(config, data, device_params, feature_fn, config.train_split,
                                num_train_images):
    scan.add(batch['fc7'], batch['image'], batch['label'])

  images = {
      'conv1_kernels.png': draw_kernels(kernel, scores, step),
      'predictions.png': draw_predictions(val['image'][preds], val['label'][preds],
                                          val['probs'][preds], class_names, step),
      'neighbours.png': draw_neighbours(val['image'][queries], val['label'][queries], scan,
                                        class_names, step, num_neighbours),
      'curves.png': draw_curves(metrics)}
  top5 = np.argsort(-val['probs'][preds], axis=1, kind='stable')[:, :5]
  result = {
      'workdir': workdir, 'step': step, 'dataset': config.dataset,
      'colour_specificity': {
          'definition': 'per kernel: sum (w - grey per pixel)^2 / sum (w - mean)^2 over the '
                        '11 x 11 x 3 kernel in pixel space; 0 grey, 1 colour only, noise ~2/3',
          'tower1': float(scores[0].mean()), 'tower2': float(scores[1].mean()),
          'per_kernel': scores.round(4).tolist()},
      'predictions': [
          {'validation_index': i, 'label': class_names[val['label'][i]],
           'top5': [[class_names[c], float(val['probs'][i, c])] for c in top5[i]]}
          for i in range(len(top5))],
      'neighbours': {
          'train_images_scanned': scan.seen, 'feature': 'fc7 of both towers, no dropout',
          'queries': [
              {'validation_index': q, 'label': class_names[val['label'][q]],
               'train_indices': scan.index[q].tolist(),
               'labels': [class_names[c] for c in scan.labels[q]],
               'distances': scan.distance[q].round(4).tolist()}
              for q in range(len(scan.queries))]},
      'files': list(FIGURES)}
  if jax.process_index() == 0:
    paths.makedirs(out_dir)
    for name, image in images.items():
      paths.write_bytes(paths.join(out_dir, name), drawing.png_bytes(image))
    paths.write_text(paths.join(out_dir, 'figures.json'), json.dumps(result, indent=1))
  return result
