"""Accelerators to compile for without having one, and what their chips can do.

A target names a platform and, for TPUs, a slice topology as
`jax.experimental.topologies` spells it: `tpu:v5e:2x2` (4 chips, one host),
`tpu:v5e:4x4` (16 chips over 4 hosts), `tpu:v3:2x2` (4 chips, 8 cores),
`tpu:v4:2x2x1`. XLA's TPU compiler comes with `libtpu` (`pip install -e
'.[tpu]'`, the version this was validated with) and runs on any Linux machine.
For GPUs, `gpu:h200` or `gpu:h200:8` (8 GPUs of one host): XLA's CUDA compiler
(`pip install -e '.[gpu-plan]'`) compiles for a GPU described to it, the
`GpuTargetConfigProto` that `gpu_target_config` writes.

The peak figures are Google's published per-chip numbers (Cloud TPU system
architecture pages): dense bfloat16 matrix throughput, HBM capacity and HBM
bandwidth. A device here is what libtpu's topology lists: a TensorCore on v3
and v4 (two per chip; a v4 VM runs each chip as one megacore device, which
the compiler without a TPU does not build, so v4 is planned per core), a chip
on v5p (megacore) and on v5e/v6e (one core).
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
  # What a program may use: JAX preallocates 75% of a GPU's memory for XLA
  # (XLA_PYTHON_CLIENT_MEM_FRACTION); XLA:TPU checks the HBM itself.
  usable_fraction: float = 1.0

  @property
  def hbm_bytes_per_device(self) -> int:
    return self.hbm_bytes // self.devices_per_chip


CHIPS = {
    'v3': Chip('TPU v3', 1, 2, 32 * GIB, 123e12, 900e9),
    'v4': Chip('TPU v4', 1, 2, 32 * GIB, 275e12, 1200e9),
    'v5e': Chip('TPU v5e', 1, 1, 16 * GIB, 197e12, 819e9),
    'v5p': Chip('TPU v5p', 2, 1, 95 * GIB, 459e12, 2765e9),
    'v6e': Chip('TPU v6e', 1, 1, 32 * GIB, 918e12, 1640e9),
}


@dataclasses.dataclass(frozen=True)
class Gpu:
  """A GPU as XLA's GPU compiler needs it described when it cannot query one
  (the `gpu_device_info` of a GpuTargetConfigProto), and its published peaks."""
  chip: Chip
  description: str          # what the driver calls it
  compute_capability: Tuple[int, int]
  sm_count: int
  clock_ghz: float          # boost clock
  l2_bytes: int


# NVIDIA's data sheets (SXM parts): dense bfloat16 tensor-core FLOP/s, memory
# and its bandwidth. Both are a GH100 with 132 SMs, 50 MiB of L2, 1.98 GHz.
GPUS = {
    # Memory as the driver reports it (81,042 and 143,771 MiB).
    'h100': Gpu(Chip('NVIDIA H100 SXM', 1, 1, 84978434048, 989e12, 3.35e12, 0.75),
                'NVIDIA H100 80GB HBM3', (9, 0), 132, 1.98, 50 * 2**20),
    'h200': Gpu(Chip('NVIDIA H200 SXM', 1, 1, 150754820096, 989e12, 4.8e12, 0.75),
                'NVIDIA H200', (9, 0), 132, 1.98, 50 * 2**20),
}

# Per-SM limits of compute capability 9.0 (CUDA programming guide).
_HOPPER_LIMITS = {
    'threads_per_block_limit': 1024, 'threads_per_warp': 32, 'shared_memory_per_block': 49152,
    'shared_memory_per_core': 233472, 'threads_per_core_limit': 2048, 'fpus_per_core': 128,
    'block_dim_limit_x': 2147483647, 'block_dim_limit_y': 65535, 'block_dim_limit_z': 65535,
    'shared_memory_per_block_optin': 232448, 'registers_per_core_limit': 65536,
    'registers_per_block_limit': 65536,
}


def gpu_target_config(gpu: Gpu) -> str:
  """The GpuTargetConfigProto (text format) XLA compiles for in place of a device."""
  fields = dict(_HOPPER_LIMITS, core_count=gpu.sm_count,
                memory_bandwidth=int(gpu.chip.hbm_bytes_per_s), l2_cache_size=gpu.l2_bytes,
                clock_rate_ghz=gpu.clock_ghz, device_memory_size=gpu.chip.hbm_bytes)
  major, minor = gpu.compute_capability
  lines = [f'  {k}: {v}' for k, v in fields.items()]
  lines.append(f'  cuda_compute_capability {{ major: {major} minor: {minor} }}')
  return ('gpu_device_info {\n' + '\n'.join(lines) + '\n}\n'
          f'platform_name: "CUDA"\ndevice_description_str: "{gpu.description}"\n')


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
  """'tpu:<generation>:<topology>' -> its devices, one per JAX device of the
  slice; 'gpu:<model>[:<count>]' -> that many GPUs of one host."""
  if spec.startswith('gpu:'):
    return _parse_gpu(spec)
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


def _parse_gpu(spec: str) -> Target:
  match = re.fullmatch(r'gpu:([a-z]\d+)(?::(\d+))?', spec)
  if not match or match.group(1) not in GPUS:
    raise ValueError(f'--target={spec!r}: expected gpu:<model>[:<count>] with a model of '
                     f'{sorted(GPUS)}, e.g. gpu:h200 or gpu:h200:8')
  gpu, count = GPUS[match.group(1)], int(match.group(2) or 1)
  # The CUDA plugin checks the libraries' versions against the GPUs at start-up;
  # where a CUDA driver library is installed but no GPU, cuInit fails that check
  # and the plugin is not loaded. Planning uses no GPU: skip it (before JAX
  # starts its backends, which the first call below does).
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
  try:
    with startup.stderr_filtered(('cudart_stub.cc',)):   # "no CUDA driver here": as intended
      devices = topologies.get_topology_desc(
          platform='cuda', topology=f'1x1x{count}', target_config=gpu_target_config(gpu)).devices
  except Exception as e:  # the CUDA plugin missing: one line says so
    raise ValueError(f'--target={spec!r}: XLA cannot compile for this GPU here '
                     f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}); is '
                     f"XLA's CUDA compiler installed (pip install -e '.[gpu-plan]')?") from e
  return Target(spec, 'gpu', gpu.chip, tuple(devices))


def gpu_compiler_available() -> bool:
  try:
    parse('gpu:h200')
  except ValueError:
    return False
  return True


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


def hlo_flops(lowered) -> float:
  """FLOPs of a lowered step's whole (unpartitioned) program by XLA's HLO cost
  analysis on the host: the GPU compiler has no cost analysis without a device.
  (The public `Lowered.cost_analysis` asks the target's compiler; this is the
  same analysis JAX runs for the CPU.)"""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  module = lowered._lowering.hlo().as_hlo_module()  # pylint: disable=protected-access
  return float(_jax.hlo_module_cost_analysis(xla_bridge.get_backend('cpu'), module)['flops'])


def per_device(costs) -> List[dict]:
  """`compiled.cost_analysis()` is a dict or a list of one per partition."""
  return list(costs) if isinstance(costs, (list, tuple)) else [costs]
