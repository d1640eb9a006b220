"""How every command runs its main: the project's flag parser and exit codes.

    command.run(main)  # in a tools module's cli(), after its flags are defined

runs `main` under absl's `app.run` with `config.parse_flags` (a bad `--config.FIELD=VALUE` or
flag: one line, exit 2) and turns the project's errors into one line on stderr,
`error: <message>`, and an exit code:

    2  refused before any work: a config, a dataset that is not there, a flag or a request the
       command cannot run (ConfigError, DatasetNotReadyError, app.UsageError, the tools'
       refusals: AblationError, CalibrationError, CaseError, EvaluateError, FiguresError,
       TargetError; `Refused` for a refusal without a class of its own)
    1  a failure during the work (FloatingPointError: training diverged; CheckpointError,
       WorkdirError: a checkpoint or the workdir could not be read or written); what was saved
       before it is intact

Anything else is a bug and keeps its traceback. The project's classes are recognised by name
among the classes of the `alexnet_jax` package, so this module imports neither JAX, TensorFlow
nor the tools (a command that loads without TensorFlow still does).
"""

import functools
import os
import sys
from typing import Any, Callable, NoReturn, Optional, Sequence

REFUSED = 2
FAILED = 1

# The project's error classes, by name (their modules need not be imported to run a command).
REFUSALS = ('ConfigError', 'DatasetNotReadyError', 'AblationError', 'CalibrationError',
            'CaseError', 'EvaluateError', 'FiguresError', 'TargetError', 'Refused')
FAILURES = ('CheckpointError', 'WorkdirError')


class Refused(Exception):
  """A request a command refuses before any work, where no error class of the project's says
  so (exit 2)."""


def exit_code(error: BaseException) -> Optional[int]:
  """2 (refused before any work), 1 (failed during the work) or None (a bug: let it raise)."""
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  for cls in type(error).__mro__:
    if cls.__module__.split('.')[0] == 'alexnet_jax':
      if cls.__name__ in REFUSALS:
        return REFUSED
      if cls.__name__ in FAILURES:
        return FAILED
  if isinstance(error, (app.UsageError, flags.Error)):
    return REFUSED
  if isinstance(error, FloatingPointError):
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


def run(main: Callable[[Sequence[str]], Any]) -> None:
  """absl's app.run of `main` with the project's flag parser and exit codes (see the module)."""
  from absl import app  # pylint: disable=import-outside-toplevel
  from alexnet_jax.core import config as config_lib  # pylint: disable=import-outside-toplevel
  app.run(functools.partial(call, main), flags_parser=config_lib.parse_flags)
