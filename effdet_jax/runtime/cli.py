"""How the commands start and end: quietly, and on a user's mistake with one
`error: <what>` line on stderr and exit status 1 instead of a traceback through
JAX, TF or absl; `--verbosity=1` (or `-v 1`) shows the traceback and every
library's log lines.

What counts as the user's: a flag absl or ml_collections refuses (an unknown
flag or `--config.` key, a bad value, a config file or name that does not
load), absl's `UsageError`, `ValueError` (a bad value, config field, dataset or checkpoint mismatch:
the project raises these naming the file or flag) and `OSError` (a missing or
unreadable file). Anything else is a bug and keeps its traceback.
"""
import argparse
import difflib
import logging as py_logging
import os
import re
import sys
from typing import Callable, Iterable, List, Optional, Sequence

from absl import app, flags, logging
import ml_collections

from effdet_jax.runtime import startup

USER_ERRORS = (ValueError, OSError, app.UsageError)
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # effdet_jax/


def run(main: Callable) -> None:
  """`absl.app.run(main)` with the user's errors as one `error:` line."""

  def guarded(argv):
    if flags.FLAGS.verbosity < 1:
      logging.get_absl_handler().addFilter(project_or_warning)
    try:
      return main(argv)
    except USER_ERRORS as e:
      if flags.FLAGS.verbosity >= 1:
        raise
      fail(str(e))
  app.run(guarded, flags_parser=parse_flags)


class ArgumentParser(argparse.ArgumentParser):
  """argparse's parser for the commands that use it (sweep, launch/): a refused
  argument is one `error:` line, not the usage text and the error."""

  def error(self, message):
    print(f'error: {message} (--help for usage)', file=sys.stderr, flush=True)
    sys.exit(2)


def fail(message: str) -> None:
  """Exit 1 with `message`; a message of several lines (a checkpoint mismatch)
  gives its details first and its last line, the summary, as the `error:` line."""
  *details, last = message.rstrip().splitlines() or ['']
  print('\n'.join([*details, f'error: {last}']), file=sys.stderr, flush=True)
  sys.exit(1)


def parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing, with a refused flag as one `error:` line."""
  missing = missing_config_file(argv)
  if missing:
    fail(missing)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    if startup.verbose(argv):
      raise
    fail(flag_error(e, argv))


def flag_error(error: Exception, argv: Sequence[str]) -> str:
  """One line for a flag absl or ml_collections refused."""
  unknown = unknown_config_key(argv)
  if unknown:
    return unknown
  message = str(error).strip()
  if 'Traceback' in message:        # a config file that raised: its exception's own line
    first = message.splitlines()[0].rstrip(':')
    first = re.sub(r': Error whilst parsing config file$', '', first)
    last = [l.strip() for l in message.splitlines() if l.strip()][-1]
    message = f"{first}: {re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', last)}"
  return re.sub(r'^flag ', '', message.splitlines()[0])


def _config_specs(argv: Sequence[str]) -> Iterable[tuple]:
  """(flag name, value) of every config-file flag in `argv`."""
  for i, arg in enumerate(argv):
    m = re.fullmatch(r'--([A-Za-z_]\w*)(?:=(.*))?', arg)
    if not m or m.group(1) not in flags.FLAGS:
      continue
    if type(flags.FLAGS[m.group(1)].parser).__name__ != 'ConfigFileFlagParser':
      continue
    value = m.group(2) if m.group(2) is not None else (argv[i + 1] if i + 1 < len(argv) else '')
    yield m.group(1), value


def missing_config_file(argv: Sequence[str]) -> Optional[str]:
  for name, spec in _config_specs(argv):
    path = spec.split(':', 1)[0]
    if not os.path.isfile(path):
      return (f'--{name}={spec}: {path} does not exist; expected a config file and an '
              f'optional argument, e.g. effdet_jax/configs/efficientdet.py:d0')
  return None


def config_keys(config: ml_collections.ConfigDict, prefix: str = '') -> Iterable[str]:
  for key, value in config.items():
    yield prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      yield from config_keys(value, f'{prefix}{key}.')


def unknown_config_key(argv: Sequence[str]) -> Optional[str]:
  """'--config.train.learnin_rate: no such config key; the closest is
  --config.train.learning_rate', for the first `--NAME.key` override whose key
  the config of flag `NAME` lacks."""
  for arg in argv:
    m = re.match(r'--([A-Za-z_]\w*)\.([\w.]+)', arg)
    if not m or m.group(1) not in flags.FLAGS:
      continue
    config = _config_of(flags.FLAGS[m.group(1)], argv)
    if not isinstance(config, ml_collections.ConfigDict):
      continue
    keys = list(config_keys(config))
    if m.group(2) in keys:
      continue
    closest = difflib.get_close_matches(m.group(2), keys, n=1, cutoff=0.6)
    hint = f'; the closest is --{m.group(1)}.{closest[0]}' if closest else ''
    return f'--{m.group(1)}.{m.group(2)}: no such config key{hint}'
  return None


def _config_of(flag, argv: Sequence[str]):
  """The config a config-file flag holds, or loads from `argv` when an override
  made its parse fail (ml_collections then leaves it empty)."""
  if flag.value is not None:
    return flag.value
  for name, spec in _config_specs(argv):
    if name == flag.name:
      try:
        return flag.parser.parse(spec)
      except Exception:  # pylint: disable=broad-except
        return None      # the file itself is what failed; absl's message says so
  return None


def project_or_warning(record: py_logging.LogRecord) -> bool:
  """Log lines shown by default: the project's own, and every library's warnings.

  Hidden: INFO from JAX (backend probing), orbax (each checkpoint step) and TF.
  """
  return record.levelno >= py_logging.WARNING or record.pathname.startswith(_PACKAGE + os.sep)
