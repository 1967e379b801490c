"""The platform the program being traced will run on.

Choices made while tracing follow it: the convolution formulation
(`model.conv_impl='auto'`), inference chunking, XLA:CPU's compiler options and
the CPU kernels. It is JAX's default backend, except inside `target(...)`, which
the ahead-of-time planner (`effdet_jax.tools.memory --target tpu:...`) uses to
build a TPU program on a machine without one.
"""
import contextlib
from typing import Iterator, Optional

import jax

_target: Optional[str] = None


def current() -> str:
  """'cpu', 'gpu' or 'tpu' (JAX's backend names)."""
  return _target or jax.default_backend()


@contextlib.contextmanager
def target(platform: str) -> Iterator[None]:
  """Trace for `platform` instead of the default backend."""
  global _target
  previous, _target = _target, platform
  try:
    yield
  finally:
    _target = previous
