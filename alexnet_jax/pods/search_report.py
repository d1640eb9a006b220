"""The search's report (pods/search.py writes it): search.md and search.png, every figure
PREDICTED."""

from alexnet_jax.core import strategies

COSTS = {'formula': 'from the formula\'s collectives and the layers\' FLOPs at the assumed '
                    'efficiency',
         'compiled': 'from each layer and resharding edge compiled as a small program and '
                     'predicted by the plan (pods/layercost.py; per mesh, "costs" below)'}

def markdown(result: dict) -> str:
  """search.md: per size, the found strategy beside the five (additive), the best few and the
  five compiled whole with their gaps, the gains, and the space searched."""
  ips = lambda b, t: f'{b / t:,.0f}' if t else '-'
  lines = [f'# Search: {result["target"]}', '', f'{result["label"]}. Global batch '
           f'{result["batch_per_device"]} x N for every strategy, {result["dtype"]}, '
           f'{result["image_size"]}px. Images/s are PREDICTED. "additive": the dynamic '
           'program\'s sum of layer and resharding costs (no overlap); "whole": the found spec '
           'compiled whole and predicted by the plan (no overlap / with overlap).', '',
           f'The found specs\' layer and edge costs: {COSTS[result.get("costs", "formula")]}; '
           'the five\'s additive costs: from the formula\'s collectives.', '',
           '| N | found (rank 1) | additive img/s | whole img/s | gap | best of the five '
           '(additive img/s) | gain (additive) |', '|---|---|---|---|---|---|---|']
  for s in result['sizes']:
    if not s['found']:
      lines.append(f'| {s["devices"]} | nothing fits | | | | | |')
      continue
    f, b = s['found'][0], s['batch_size']
    whole = f.get('whole', {})
    w = whole.get('step_seconds')
    best = s.get('best_hand_written')
    whole_text = (f'{ips(b, w["no_overlap"])} / {ips(b, w["with_overlap"])} | {whole["gap"]:+.1%}'
                  if w else f'{whole.get("skipped", "not compiled")} | ')
    best_text = (f'{best} ({ips(b, s["hand_written"][best])}) | {s["gain"]:.2f}x' if best
                 else ' | ')
    lines.append(f'| {s["devices"]} | {f["describe"]} | {ips(b, f["additive_seconds"])} | '
                 f'{whole_text} | {best_text} |')
  keep = max((len(s['found']) for s in result['sizes']), default=0)
  cell = lambda b, w: (f'{ips(b, w["step_seconds"]["no_overlap"])} ({w["gap"]:+.0%})'
                       if 'step_seconds' in w else w.get('skipped', '-') if w else '-')
  lines += ['', '## Compiled whole (PREDICTED images/s, no overlap; in brackets the gap: whole '
            'over additive, minus 1)', '', 'Each program compiled whole by the target\'s '
            'compiler and predicted by the plan. Gain: the fastest of the five over the fastest '
            'found spec, both compiled whole (> 1: the search wins).', '',
            '| N | ' + ' | '.join(f'found #{k + 1}' for k in range(keep)) + ' | '
            + ' | '.join(strategies.STRATEGIES) + ' | gain (whole) |',
            '|---|' + '---|' * (keep + len(strategies.STRATEGIES) + 1)]
  for s in result['sizes']:
    b, five = s['batch_size'], s.get('hand_written_whole', {})
    found = [cell(b, f.get('whole', {})) for f in s['found']] + ['-'] * (keep - len(s['found']))
    gain = (f'{s["gain_whole"]:.2f}x (#{s["best_whole_rank"]} over '
            f'{s["best_hand_written_whole"]})' if 'gain_whole' in s else '-')
    lines.append(f'| {s["devices"]} | ' + ' | '.join(
        found + [cell(b, five.get(n, {})) for n in strategies.STRATEGIES]) + f' | {gain} |')
  lines += ['', '## The five, costed the same way (additive, PREDICTED images/s)', '',
            '| N | ' + ' | '.join(strategies.STRATEGIES) + ' |',
            '|---|' + '---|' * len(strategies.STRATEGIES)]
  for s in result['sizes']:
    lines.append(f'| {s["devices"]} | ' + ' | '.join(
        ips(s['batch_size'], s['hand_written'].get(n)) for n in strategies.STRATEGIES) + ' |')
  lines += ['', '## The space searched', '']
  for s in result['sizes']:
    for m in s['meshes']:
      lines.append(f'- N={s["devices"]}, mesh {m["mesh"]}: candidates per layer '
                   f'{m["candidates"]}; {m["refused"]} refused; costs: {m.get("costs")} '
                   f'({m["seconds_to_search"]:.1f} s)')
    reasons = sorted({r for m in s['meshes'] for r in m['refused_reasons']})
    for r in reasons[:8]:
      lines.append(f'  - refused: {r}')
    if len(reasons) > 8:
      lines.append(f'  - ... {len(reasons) - 8} more reasons (search.json)')
  lines += ['', f'Searched in {result["seconds_to_search"]:.0f} s; with the whole programs '
            f'{result["seconds_total"]:.0f} s.']
  return '\n'.join(lines) + '\n'


def chart(result: dict) -> bytes:
  """search.png: PREDICTED images/s per device against N, the five (additive), the found
  strategy (additive and whole) and the fastest of the five compiled whole."""
  from alexnet_jax.report import charts  # pylint: disable=g-import-not-at-top
  series = []
  sizes = [s for s in result['sizes'] if s['found']]
  for name in strategies.STRATEGIES:
    pts = [(s['devices'], s['batch_size'] / s['hand_written'][name] / s['devices'])
           for s in sizes if name in s['hand_written']]
    if pts:
      series.append((name, [p[0] for p in pts], [p[1] for p in pts]))
  series.append(('found (additive)', [s['devices'] for s in sizes],
                 [s['batch_size'] / s['found'][0]['additive_seconds'] / s['devices']
                  for s in sizes]))
  whole = [(s['devices'], s['batch_size'] / s['found'][0]['whole']['step_seconds']['no_overlap']
            / s['devices']) for s in sizes if 'step_seconds' in s['found'][0].get('whole', {})]
  if whole:
    series.append(('found (whole program)', [p[0] for p in whole], [p[1] for p in whole]))
  five = [(s['devices'], s['batch_size'] / min(w['step_seconds']['no_overlap']
                                               for w in s['hand_written_whole'].values()
                                               if 'step_seconds' in w) / s['devices'])
          for s in sizes if 'best_hand_written_whole' in s]
  if five:
    series.append(('best of the five (whole program)', [p[0] for p in five],
                   [p[1] for p in five]))
  fig, (top,) = charts.figure(900, 480, 1)
  fig.suptitle(result['label'], fontsize=charts.TITLE_SIZE, x=0.01, ha='left')
  charts.lines(top, 'PREDICTED images/s per device (no overlap)', series, x_label='devices',
               y_label='images/s per device', devices=True, y_min=0)
  return charts.png(fig)
