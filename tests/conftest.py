import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PARITY = os.path.join(os.path.dirname(ROOT), 'shared', 'parity')
D0_PARITY = os.path.join(PARITY, 'efficientdet-d0')


def require_parity():
  if not os.path.isdir(D0_PARITY):
    pytest.skip(f'official reference data not found at {PARITY} (../shared/parity beside the '
                f'checkout); parity tests need it')
  return D0_PARITY
