"""The one writer of a report's three files: STEM.json (everything), STEM.md (the tables) and
STEM.png (the chart), for comms, the plan and the plan's validation.

    write_report(out_dir, 'plan', result, plan.markdown, plan.chart, chart_optional=True)

The markdown and the chart are functions of the result, called here: where the chart may be
missing (`chart_optional`: matplotlib or Pillow not installed, as on the JAX images lent for
measuring), STEM.png is left out, the result's 'chart' field says why and STEM.md ends with it.
"""

import json
import os
from typing import Callable


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
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f'{stem}.json'), 'w') as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out_dir, f'{stem}.md'), 'w') as f:
    f.write(text)
  if png is not None:
    with open(os.path.join(out_dir, f'{stem}.png'), 'wb') as f:
      f.write(png)
