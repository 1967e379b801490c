"""Accelerators to compile for without having one, and what their chips can do.

A target names a platform and, for TPUs, a slice topology as
`jax.experimental.topologies` spells it: `tpu:v5e:2x2` (4 chips, one host),
`tpu:v5e:4x4` (16 chips over 4 hosts), `tpu:v3:2x2` (4 chips, 8 cores),
`tpu:v4:2x2x1`. XLA's TPU compiler comes with `libtpu` (`pip install -e
'.[tpu]'`, the version this was validated with) and runs on any Linux machine.

The peak figures are Google's published per-chip numbers (Cloud TPU system
architecture pages): dense bfloat16 matrix throughput, HBM capacity and HBM
bandwidth. A JAX device is a TensorCore on v2/v3 (two per chip) and a chip on
v4/v5p (megacore) and v5e/v6e (one core).
"""
import collections
import dataclasses
import os
import re
from typing import Dict, List, Tuple

import jax
import numpy as np
from jax.experimental import topologies

from effdet_jax.runtime import startup

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  cores_per_device: int     # TensorCores a JAX device drives
  devices_per_chip: int
  hbm_bytes: int            # per chip
  bf16_flops: float         # per chip, per second
  hbm_bytes_per_s: float    # per chip

  @property
  def hbm_bytes_per_device(self) -> int:
    return self.hbm_bytes // self.devices_per_chip


CHIPS = {
    'v3': Chip('TPU v3', 1, 2, 32 * GIB, 123e12, 900e9),
    'v4': Chip('TPU v4', 2, 1, 32 * GIB, 275e12, 1200e9),
    'v5e': Chip('TPU v5e', 1, 1, 16 * GIB, 197e12, 819e9),
    'v5p': Chip('TPU v5p', 2, 1, 95 * GIB, 459e12, 2765e9),
    'v6e': Chip('TPU v6e', 1, 1, 32 * GIB, 918e12, 1640e9),
}


@dataclasses.dataclass(frozen=True)
class Target:
  spec: str                 # as given, e.g. 'tpu:v5e:2x2'
  platform: str             # JAX's name: 'tpu'
  chip: Chip
  devices: Tuple[jax.Device, ...]

  @property
  def num_hosts(self) -> int:
    return len({d.process_index for d in self.devices})


def compile_only_host() -> None:
  """Before any backend starts: run JAX on the CPU (this process never drives a
  TPU, and on a TPU VM the chips stay with the job that has them), and let
  libtpu load beside another process that holds its lock file, without asking
  the cloud's metadata server about a TPU VM (a page of warnings elsewhere)."""
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  jax.config.update('jax_platforms', 'cpu')


def parse(spec: str) -> Target:
  """'tpu:<generation>:<topology>' -> its devices, one per JAX device of the slice."""
  match = re.fullmatch(r'tpu:(v\d+[a-z]?):(\d+(?:x\d+)+)', spec)
  if not match or match.group(1) not in CHIPS:
    raise ValueError(f'--target={spec!r}: expected tpu:<generation>:<topology> with a generation '
                     f'of {sorted(CHIPS)}, e.g. tpu:v5e:2x2, tpu:v3:4x4, tpu:v4:2x2x1')
  generation, topology = match.groups()
  chip = CHIPS[generation]
  try:
    # libtpu says it cannot find this machine's TPU type: true, and beside the point here.
    with startup.stderr_filtered(('Failed to find host bounds for accelerator type',)):
      devices = topologies.get_topology_desc(topology_name=f'{generation}:{topology}',
                                             platform='tpu').devices
  except Exception as e:  # libtpu missing or the topology unknown to it: one line says which
    raise ValueError(f'--target={spec!r}: XLA cannot describe this TPU slice ({type(e).__name__}: '
                     f'{str(e).splitlines()[0] if str(e) else e}); is libtpu installed '
                     f"(pip install -e '.[tpu]')?") from e
  if chip.cores_per_device > 1:
    # libtpu lists both cores of a megacore chip; JAX drives the chip as one device.
    devices = [d for d in devices if d.core_on_chip == 0]
  return Target(spec, 'tpu', chip, tuple(devices))


def libtpu_available() -> bool:
  try:
    parse('tpu:v5e:2x2')
  except ValueError:
    return False
  return True


_SHAPE = re.compile(r'\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64)\[([\d,]*)\]')
_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'bf16': 2, 'f16': 2, 's32': 4,
          'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}


def all_reduce_elements(hlo_text: str) -> Dict[str, int]:
  """Elements each device all-reduces per step, by dtype: the results of the
  compiled module's all-reduce ops (async ones counted at their start)."""
  counts: Dict[str, int] = collections.Counter()
  for line in hlo_text.splitlines():
    match = re.match(r'\s*(?:ROOT )?%\S+ = (.+?) all-reduce(?:-start)?\(', line)
    if match:
      for dtype, dims in _SHAPE.findall(match.group(1)):
        counts[dtype] += int(np.prod([int(d) for d in dims.split(',') if d]))
  return dict(counts)


def all_reduce_bytes(hlo_text: str) -> int:
  return sum(n * _BYTES[dtype] for dtype, n in all_reduce_elements(hlo_text).items())


# Custom calls XLA:TPU's cost analysis (libtpu 0.0.42.1) counts as -1 s each in
# `optimal_seconds`: multiplying a 3.9M-element vector by a concatenation of
# 493 broadcasts (one ConcatBitcast) was estimated at -999.8 ms, D0's train step
# (476 of them) at -475.9 s, the evaluation step at -1 s from the ZeroCrop of
# its gathered outputs, the tiny test model's train step on a v6e at -2.0 s from
# one PrepareAsyncCallStart/Done pair. tests/test_tpu_planning.py checks the
# first still holds.
UNCOSTED_CUSTOM_CALLS = ('ConcatBitcast', 'ZeroCrop', 'PrepareAsyncCallStart',
                         'PrepareAsyncCallDone')


def uncosted_ops(hlo_text: str) -> int:
  """How many ops of the compiled TPU program have the cost model's -1 s."""
  return sum(hlo_text.count(f'custom_call_target="{name}"') for name in UNCOSTED_CUSTOM_CALLS)


def estimated_seconds(cost: dict, hlo_text: str) -> float:
  """XLA's estimate of the step's time, with the -1 s of each uncosted op undone."""
  return float(cost['optimal_seconds']) + uncosted_ops(hlo_text)


def per_device(costs) -> List[dict]:
  """`compiled.cost_analysis()` is a dict or a list of one per partition."""
  return list(costs) if isinstance(costs, (list, tuple)) else [costs]
