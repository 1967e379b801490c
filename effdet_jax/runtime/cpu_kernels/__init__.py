"""Hand-written XLA:CPU kernels, compiled on first use with the machine's C++ compiler.

They replace what XLA:CPU does worst in the training step: the gradients of
depthwise convolutions (`depthwise_grads.cc`) and the class head's focal loss
(`focal_loss.cc`); each file says why. The shared library is built once per
source, jaxlib version and CPU into `$EFFDET_JAX_CACHE_DIR` (default
`~/.cache/effdet_jax`) and its handlers registered as FFI targets. Without a
compiler, or with `EFFDET_JAX_CPU_KERNELS=0`, callers keep their XLA
formulation; the fallback is logged with the reason.
"""
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional

import jax
import jaxlib

from effdet_jax.runtime import platforms

_HERE = Path(__file__).parent
_SOURCES = (_HERE / 'depthwise_grads.cc', _HERE / 'focal_loss.cc')
_HEADERS = (_HERE / 'parallel_rows.h',)
# No errno or trapping semantics, so that loops with sqrt, floor and selects vectorize.
_FLAGS = ('-O3', '-march=native', '-std=c++17', '-fno-math-errno', '-fno-trapping-math',
          '-shared', '-fPIC', '-w')


def _cpu_signature() -> str:
  """What `-march=native` depends on, so a cache shared by different hosts stays safe."""
  try:
    info = Path('/proc/cpuinfo').read_text().splitlines()
    return '\n'.join(sorted({line for line in info if line.startswith(('model name', 'flags'))}))
  except OSError:
    return platform.processor() or platform.machine()


def _library_path(compiler: str) -> Path:
  key = hashlib.sha256('\0'.join([
      *(path.read_text() for path in _SOURCES + _HEADERS), jaxlib.__version__, compiler,
      ' '.join(_FLAGS), _cpu_signature()
  ]).encode()).hexdigest()[:16]
  cache = Path(os.environ.get('EFFDET_JAX_CACHE_DIR', Path.home() / '.cache' / 'effdet_jax'))
  return cache / f'cpu_kernels-{key}.so'


def _build(compiler: str, library: Path) -> None:
  library.parent.mkdir(parents=True, exist_ok=True)
  # Built beside its final name and renamed, so concurrent processes never load half a file.
  fd, partial = tempfile.mkstemp(suffix='.so', dir=library.parent)
  os.close(fd)
  try:
    command = [compiler, *_FLAGS, f'-I{jax.ffi.include_dir()}', *map(str, _SOURCES), '-o', partial]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
      raise RuntimeError(f'{" ".join(command)} failed:\n{result.stderr[-2000:]}')
    os.replace(partial, library)
  finally:
    if os.path.exists(partial):
      os.remove(partial)


class Targets(NamedTuple):
  """The FFI targets' names.

  depthwise_kernel_grad(x, dy) -> [kh, kw, C] and depthwise_input_grad(dy, kernel)
  -> x's shape, both with attributes `stride`, `top`, `left` (TF `SAME` padding
  before the image); focal_loss(logits [N, C], targets [N] int32) -> (loss sum, its
  gradient), attributes `ignored` (the target of anchors without loss), `alpha`,
  `gamma`, `smoothing`.
  """
  depthwise_kernel_grad: str
  depthwise_input_grad: str
  focal_loss: str


_HANDLERS = Targets('EffdetDepthwiseKernelGrad', 'EffdetDepthwiseInputGrad', 'EffdetFocalLoss')


def targets() -> Optional[Targets]:
  """The registered FFI targets, or None where the kernels are unavailable, the
  program is for an accelerator (where XLA's versions are the fast ones) or one
  process holds several CPU devices."""
  return _cpu_targets() if platforms.current() == 'cpu' else None


@functools.cache
def _cpu_targets() -> Optional[Targets]:
  if jax.local_device_count() > 1:
    # Simulated CPU devices (tests, --xla_force_host_platform_device_count) share one
    # pool of threads, on which XLA's in-process collectives wait for each other; with
    # these kernels' extra work on those threads, steps deadlocked.
    logging.info('%d CPU devices in this process: XLA runs the ops of the CPU kernels.',
                 jax.local_device_count())
    return None
  if os.environ.get('EFFDET_JAX_CPU_KERNELS', '1') == '0':
    logging.info('EFFDET_JAX_CPU_KERNELS=0: the CPU kernels are off, XLA runs their ops.')
    return None
  compiler = shutil.which(os.environ.get('CXX', 'c++'))
  if compiler is None:
    logging.warning('No C++ compiler (CXX=%s) found: XLA runs the ops of the CPU kernels '
                    '(slower CPU training).', os.environ.get('CXX', 'c++'))
    return None
  library = _library_path(compiler)
  try:
    if not library.exists():
      _build(compiler, library)
    handlers = ctypes.cdll.LoadLibrary(str(library))
  except (OSError, RuntimeError) as e:
    logging.warning('Could not build the CPU kernels, XLA runs their ops (slower CPU '
                    'training): %s', e)
    return None
  return _register(handlers)


_registered: Optional[Targets] = None


def _register(handlers: ctypes.CDLL) -> Targets:
  """Registers the handlers once per process (XLA refuses a second library under a
  registered name); later calls return the names already registered."""
  global _registered
  if _registered is None:
    names = Targets(*(f'effdet_jax_{field}' for field in Targets._fields))
    for name, handler in zip(names, _HANDLERS):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(handlers, handler)),
                                  platform='cpu')
    _registered = names
  return _registered
