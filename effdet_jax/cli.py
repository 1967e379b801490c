"""How the commands end on a user's mistake: `error: <what>` on stderr and exit
status 1, instead of a traceback through JAX and TF; `--verbosity=1` (or `-v 1`)
shows the traceback.

What counts as the user's: `ValueError` (a bad value, flag, config field,
dataset or checkpoint mismatch: the project raises these naming the file or
flag) and `OSError` (a missing or unreadable file). Anything else is a bug and
keeps its traceback.
"""
import sys
from typing import Callable

from absl import app, flags

USER_ERRORS = (ValueError, OSError)


def run(main: Callable) -> None:
  """`absl.app.run(main)` with the user's errors as one `error:` message."""
  def guarded(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      if flags.FLAGS.verbosity >= 1:
        raise
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)
  app.run(guarded)
