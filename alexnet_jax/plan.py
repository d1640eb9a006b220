"""`python -m alexnet_jax.plan`: the pod plan, every strategy compiled for a TPU slice or GPU nodes and its step time predicted; with --published, the published runs replayed and the prediction's error stated (alexnet_jax/pods/plan.py, alexnet_jax/pods/validation.py)."""

import sys

from alexnet_jax.runtime import quiet

if __name__ == '__main__':
  compile_only = quiet.compile_only(sys.argv) or '--published' in sys.argv
  if compile_only:
    quiet.compile_only_environment()
  with quiet.held_stderr(enabled=compile_only):
    # Imported here: what JAX and the compilers print as they load is held back too.
    from alexnet_jax.pods import plan  # pylint: disable=g-import-not-at-top
    plan.cli()
