"""A command's start without the libraries' start-up noise.

`python -m effdet_jax.<command>` calls `quiet()` before anything else is
imported (from the package's `__init__`): TF's C++ notices (the oneDNN line,
"All log messages before absl::InitializeLog()", which TF 2.21 prints at
import whatever TF_CPP_MIN_LOG_LEVEL says) and libtpu's TPU probing on a
machine without TPUs (a dozen lines when the `tpu` extra is installed) are
hidden. Nothing else is: TF's import runs with stderr captured and every line
but the known notices is printed again. `main` and `benchmark` first restart
themselves with huge pages (`huge_pages.py`), before TF is imported. `--verbosity=1` (or
`TF_CPP_MIN_LOG_LEVEL` / `JAX_PLATFORMS` set by the user) keeps it all.
"""
import contextlib
import importlib.util
import os
import re
import sys
import tempfile
from typing import Iterator, Sequence

from effdet_jax.runtime import huge_pages

NOTICES = ('All log messages before absl::InitializeLog() is called',
           'oneDNN custom operations are on')
# The commands whose time goes into XLA:CPU steps restart once with huge pages
# (effdet_jax/runtime/huge_pages.py), before anything heavy is imported.
HUGE_PAGE_COMMANDS = ('effdet_jax.main', 'effdet_jax.tools.benchmark')


def command(orig_argv: Sequence[str]) -> str:
  """'effdet_jax.main' for `python -m effdet_jax.main ...`, else ''."""
  args = list(orig_argv)
  return args[args.index('-m') + 1] if '-m' in args[:-1] else ''


def verbose(argv: Sequence[str]) -> bool:
  """Whether `argv` asks for `--verbosity` >= 1 (read before absl parses flags)."""
  for i, arg in enumerate(argv):
    m = re.fullmatch(r'--?(?:verbosity|v)(?:=(-?\d+))?', arg)
    if m:
      value = m.group(1) if m.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else '')
      return bool(re.fullmatch(r'-?\d+', value)) and int(value) >= 1
  return False


def quiet(argv: Sequence[str] = ()) -> None:
  if command(sys.orig_argv) in HUGE_PAGE_COMMANDS:
    huge_pages.reexec_with_huge_pages()
  if verbose(argv or sys.argv):
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')   # TF's INFO and WARNING lines from C++
  skip_absent_tpu()
  with stderr_filtered(NOTICES):
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import


@contextlib.contextmanager
def stderr_filtered(notices: Sequence[str]) -> Iterator[None]:
  """Runs the block with file descriptor 2 captured, then prints again every
  captured line that contains none of `notices`."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode='w+b') as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [l for l in captured.read().decode(errors='replace').splitlines(keepends=True)
              if not any(n in l for n in notices)]
      sys.stderr.write(''.join(kept))
      sys.stderr.flush()


def skip_absent_tpu() -> None:
  """With libtpu installed (the `tpu` extra) on a machine with neither TPU chips
  nor GPUs, JAX would probe for a TPU at its first use and print libtpu's errors
  about it; use the CPU at once. `JAX_PLATFORMS` set by the user wins."""
  if os.environ.get('JAX_PLATFORMS') or importlib.util.find_spec('libtpu') is None:
    return
  import jax  # pylint: disable=g-import-not-at-top
  try:   # JAX's own probes: they read /sys and /proc and initialize nothing
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    gpus = hardware_utils.has_visible_nvidia_gpu() or hardware_utils.num_available_amd_gpus(1)
  except (ImportError, AttributeError, OSError):
    return
  if not chips and not gpus:
    jax.config.update('jax_platforms', 'cpu')   # JAX read the environment at its import
