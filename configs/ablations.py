"""The ablation runner's baseline: the paper's setting of every switch it turns off.

    python -m alexnet_jax.ablate --config=configs/ablations.py --workdir=/tmp/alexnet_ablations \
        --variants=lrn,overlap,one_tower,pca,tencrop

Starts from configs/quickstart.py (the full network on the generated 10-class dataset), or from
configs/tiny.py with `--config=configs/ablations.py:tiny` (narrow layers, 64 px crops: minutes
on a CPU). What the paper uses and quickstart / tiny do not: PCA colour noise with std 0.1
(quickstart and tiny train without it) and fc8 drawn like the other layers (quickstart starts
it at zero). LRN, 3 / 2 pooling, two towers and dropout 0.5 are already every config's defaults
(configs/default.py); they are set here again so the baseline is the paper's whatever the
defaults become. Every run is evaluated on the centre crop; the
`tencrop` variant evaluates the baseline on the ten patches (alexnet_jax/paper/ablate.py).
"""

from configs import quickstart
from configs import tiny

BASES = {'quickstart': quickstart, 'tiny': tiny}


def get_config(base: str = 'quickstart'):
  if base not in BASES:
    raise ValueError(f'configs/ablations.py:{base}: use one of {", ".join(BASES)}.')
  c = BASES[base].get_config()
  c.model.lrn = True
  c.model.pool_window = 3
  c.model.pool_stride = 2
  c.model.num_towers = 2
  c.model.dropout_rate = 0.5
  c.model.head_zeroinit = False  # quickstart's short-run start; the paper draws fc8 like the rest
  c.cache_decoded = True  # several epochs: decode each image once (2,600 of them: about 0.5 GB)
  c.pca_lighting_std = 0.1
  c.pca_eigen = 'published'  # the paper's ImageNet eigenvectors; 'dataset' computes this data's
  c.eval_crops = 'center'
  c.final_eval_crops = 'center'
  return c
