import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from effdet_jax.runtime import huge_pages  # noqa: E402  (after the path)
PARITY = os.path.join(os.path.dirname(ROOT), 'shared', 'parity')
D0_PARITY = os.path.join(PARITY, 'efficientdet-d0')


def require_parity(folder: str = 'efficientdet-d0'):
  path = os.path.join(PARITY, folder)
  if not os.path.isdir(path):
    pytest.skip(f'official reference data not found at {path} (../shared/parity beside the '
                f'checkout); parity tests need it')
  return path


# The suite runs on the CPU. With libtpu installed (the `tpu` extra, for the
# ahead-of-time TPU tests), JAX would otherwise look for TPU chips in every
# process (seconds each), and the workers' compiles for TPU each load libtpu.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

# The xdist workers start after this file is read: give them glibc's huge-page
# malloc as the commands have it (effdet_jax/runtime/huge_pages.py), so tests run as fast.
_env = huge_pages.environment_with_tunable(os.environ)
if _env is not None:
  os.environ['GLIBC_TUNABLES'] = _env['GLIBC_TUNABLES']
