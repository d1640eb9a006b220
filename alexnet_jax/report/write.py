"""The one writer of a report's three files: STEM.json (everything), STEM.md (the tables) and
STEM.png (the chart), for comms, the plan and the plan's validation.

    write_report(out_dir, 'plan', result, plan.markdown, plan.chart, chart_optional=True)

The markdown and the chart are functions of the result, called here: where the chart may be
missing (`chart_optional`: matplotlib or Pillow not installed, as on the JAX images lent for
measuring), STEM.png is left out, the result's 'chart' field says why and STEM.md ends with it.
"""

import json
from typing import Callable

from alexnet_jax.runtime import paths


def write_report(out_dir: str, stem: str, result: dict, markdown: Callable[[dict], str],
                 chart: Callable[[dict], bytes], chart_optional: bool = False) -> None:
  """OUT_DIR/STEM.json, STEM.md and STEM.png of `result` (see the module)."""
  try:
    png = chart(result)
  except ImportError as e:
    if not chart_optional:
      raise
    png = None
    result['chart'] = f'{stem}.png not drawn: {e}'
  text = markdown(result) + (f'\n{result["chart"]}\n' if png is None else '')
  paths.makedirs(out_dir)  # out_dir may be gs://bucket/dir (runtime/paths.py)
  paths.write_text(paths.join(out_dir, f'{stem}.json'), json.dumps(result, indent=1))
  paths.write_text(paths.join(out_dir, f'{stem}.md'), text)
  if png is not None:
    paths.write_bytes(paths.join(out_dir, f'{stem}.png'), png)
