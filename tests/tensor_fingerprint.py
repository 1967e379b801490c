"""A tensor in three numbers, for reference data too large to ship whole: its norm
and its dot products with two fixed random sign vectors (seeded by the tensor's
name). A difference `d` between two tensors moves each dot product by about
||d||, so comparing fingerprints measures ||ours - official|| / ||official|| to
within a small factor. numpy only: the reference generator, run beside the
official code, imports it too."""
import zlib
from typing import List, Sequence

import numpy as np


def fingerprint(name: str, tensor) -> List[float]:
  values = np.asarray(tensor, np.float64).ravel()
  signs = np.random.default_rng(zlib.crc32(name.encode())).choice([-1.0, 1.0], (2, values.size))
  return [float(np.linalg.norm(values)), *(float(x) for x in signs @ values)]


def fingerprint_error(ours: Sequence[float], official: Sequence[float],
                      absolute_below: float = 0.0) -> float:
  """The largest of the three differences, relative to the official norm (absolute
  where that norm is below `absolute_below`)."""
  difference = max(abs(a - b) for a, b in zip(ours, official))
  return difference if official[0] < absolute_below else difference / official[0]
