"""The two kinds of error a command ends with, and so its exit code.

Every error class of the project derives from one of them, so the command runner
(runtime/command.py) reads the exit code from the class itself:

    Refused (exit 2): refused before any work. A config, a flag, a dataset that is not there, a
        file or a request the command cannot use. Nothing was written.
    Failed (exit 1): a failure during the work (a checkpoint or the workdir that stopped taking
        writes). What was saved before it is intact.

They sit at the bottom of the package (no imports) so the data layer, core and the tools all
derive from the same two classes.
"""


class Refused(Exception):
  """Refused before any work (exit 2); a refusal without a class of its own raises this."""


class Failed(Exception):
  """Failed during the work; what was saved before it is intact (exit 1)."""
