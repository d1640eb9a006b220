"""The data layer's refusals: the error, and what its messages share.

A `DatasetNotReadyError` stops a command before it writes anything (the commands exit 2 on it).
Its messages end with what to do, often the command to re-run: `current_command` writes the
user's own. This module imports neither TensorFlow nor tensorflow-datasets, so a command can
name the error without loading them.
"""

import os
import shlex
import sys
from typing import Any, Sequence

from alexnet_jax.runtime import errors
from alexnet_jax.runtime import paths

IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
# What `md5sum` prints for the archives image-net.org serves.
IMAGENET_MD5 = {'ILSVRC2012_img_train.tar': '1d675b47d978889d74fa0da5fadfb00e',
                'ILSVRC2012_img_val.tar': '29b22e2961454d5413ddabcf34fc5622'}


class DatasetNotReadyError(errors.Refused):
  """The dataset cannot be read as it is: files only a person can provide (ImageNet's tars),
  damaged files, or a dataset written for other splits. Raised before anything is written."""


def current_command() -> str:
  """This process's command line, as a person would re-type it (`python -m pkg.mod ...`)."""
  main = getattr(sys.modules.get('__main__'), '__spec__', None)
  if main is not None and main.name and not main.name.startswith(('pytest', 'ipykernel')):
    return shlex.join(['python', '-m', main.name.removesuffix('.__main__'), *sys.argv[1:]])
  if sys.argv and sys.argv[0]:
    return shlex.join(['python', *sys.argv])
  return '<the command you ran>'


def listing(names: Sequence[str], limit: int = 5) -> str:
  shown = ', '.join(names[:limit])
  return shown + (f' (and {len(names) - limit} more)' if len(names) > limit else '')


def imagenet_manual_dir(spec: Any,
                         builder: Any) -> str:
  """Where tfds will read the tars from (tfds's default: <data_dir>/downloads/manual)."""
  if spec.manual_dir:
    return paths.absolute(os.path.expanduser(spec.manual_dir))
  return paths.absolute(os.fspath(builder.data_dir_root / 'downloads' / 'manual'))
