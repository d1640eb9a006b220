"""The paper's results from trained runs: ablations of its design claims, evaluation with
ensembles (Table 2), and its figures (Fig. 3 and 4)."""
