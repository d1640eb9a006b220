"""How every command runs its main: absl's flag parsing and the exit codes.

    if __name__ == '__main__':
      command.run(main, config_lib.parse_flags)  # in alexnet_jax/<command>.py, below its flags

runs `main` under absl's `app.run` with the given flag parser (the project's checks every
`--config.FIELD=VALUE`: one line, exit 2) and turns the project's errors into one line on stderr,
`error: <message>`, and an exit code read from the error's class (runtime/errors.py):

    2  refused before any work: every `errors.Refused` (a config, a dataset that is not there, a
       file or request the command cannot use), absl's usage and flag errors
    1  a failure during the work: every `errors.Failed` (a checkpoint or the workdir could not be
       written), FloatingPointError (training diverged), OSError (a file the work needed could
       not be read or written); what was saved before it is intact

Anything else is a bug and keeps its traceback. This module imports neither JAX nor TensorFlow, so
a command that loads without TensorFlow still does.
"""

import functools
import os
import sys
from typing import Any, Callable, NoReturn, Optional, Sequence

from absl import app
from absl import flags

from alexnet_jax.runtime import errors

REFUSED = 2
FAILED = 1

Refused = errors.Refused  # the commands' refusal without a class of its own


def exit_code(error: BaseException) -> Optional[int]:
  """2 (refused before any work), 1 (failed during the work) or None (a bug: let it raise)."""
  if isinstance(error, (errors.Refused, app.UsageError, flags.Error)):
    return REFUSED
  if isinstance(error, (errors.Failed, FloatingPointError, OSError)):
    return FAILED
  return None


def write_error(message: str) -> None:
  """`error: <message>` on stderr in one write to the descriptor: other threads (tensorstore's,
  after a failed save) print to the same stderr, and a buffered print could be glued onto the end
  of their half-written line. (Not logged as well: absl's log is this same stderr.)"""
  sys.stdout.flush()
  sys.stderr.flush()
  os.write(2, f'error: {message}\n'.encode())


def fail(message: str, code: int) -> NoReturn:
  write_error(message)
  sys.exit(code)


def call(main: Callable[[Sequence[str]], Any], argv: Sequence[str]) -> Any:
  """`main(argv)`, with the project's errors turned into their line and exit code."""
  try:
    return main(argv)
  except Exception as e:  # pylint: disable=broad-except  # the ones exit_code knows, else raised
    code = exit_code(e)
    if code is None:
      raise
    fail(str(e) or repr(e), code)


def run(main: Callable[[Sequence[str]], Any],
        flags_parser: Callable[[Sequence[str]], Any]) -> None:
  """absl's app.run of `main` with `flags_parser` and the exit codes (see the module)."""
  app.run(functools.partial(call, main), flags_parser=flags_parser)
