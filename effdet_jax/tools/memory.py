"""Memory and cost of the train or eval step, from XLA's own analyses, without running it.

On this machine's backend, for one device holding `per_device_batch` images:

    python -m effdet_jax.tools.memory --config effdet_jax/configs/efficientdet.py:d4 \
        --per_device_batch 4 [--config.model.remat=True] [--json]

Ahead of time for a TPU slice (no TPU needed; `pip install -e '.[tpu]'` brings
XLA's TPU compiler):

    python -m effdet_jax.tools.memory --config effdet_jax/configs/efficientdet.py:d7x \
        --target tpu:v4:2x2x1 --global_batch_size 16 [--precision bfloat16] \
        [--config.model.remat=True] [--mode train|eval] [--json]

compiles the real step for every device of the slice, as training jits it
(state replicated and donated, the batch split over the `data` axis;
`training/step.jit_train_step`) or as evaluation does (`evaluate.jit_eval_step`),
with the per-platform choices made for the target (native convolutions, the
matrix anchor matcher). It prints per device the state and batch, the
temporaries, the peak and whether it fits the chip's HBM; XLA's estimated step
time, FLOPs and bytes per step and per image, the images per second per chip
that estimate implies and the fractions of the chip's peak FLOP/s and HBM
bandwidth; and the bytes all-reduced per step. Times are XLA's estimates, not
measurements (see docs/tpu.md).

For GPUs of one host (`--target gpu:h200[:COUNT]`, `pip install -e
'.[gpu-plan]'`), XLA's CUDA compiler builds the step for GPUs it is told about:
memory, FLOPs and all-reduce bytes as above, but no time estimate (XLA has no
GPU cost model without the device).
"""
import json
import re
import time

from absl import app, flags
import jax
import ml_collections
import numpy as np
from ml_collections import config_flags

from effdet_jax.inference import evaluate
from effdet_jax.models import layers
from effdet_jax.models.variables import abstract_variables
from effdet_jax.runtime import cli, parallel, platforms
from effdet_jax.tools import accelerators, hlo_costs
from effdet_jax.training import optim
from effdet_jax.training.step import batch_spec, create_state, jit_train_step, make_train_step

FLAGS = flags.FLAGS
GIB = 2**30
MODES = ('train', 'eval')


def train_step_memory(config, per_device_batch: int):
  """The host backend's figures for one device (no sharding)."""
  abstract_vars = abstract_variables(config)
  layout = optim.ParamLayout(abstract_vars, config.train.freeze_regex)
  state = jax.eval_shape(lambda v: create_state(v, layout, config), abstract_vars)
  batch = batch_spec(config, per_device_batch)
  segments = jax.ShapeDtypeStruct((layout.num_params,), np.int32)
  start = time.perf_counter()
  compiled = jax.jit(make_train_step(config, layout, _schedule(config)), donate_argnums=0).lower(
      state, batch, segments).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  arguments = analysis.argument_size_in_bytes
  temporaries = analysis.temp_size_in_bytes
  return {'model': config.model.name, 'per_device_batch': per_device_batch,
          'image_size': list(batch['image'].shape[1:3]), 'precision': config.model.dtype,
          'remat': config.model.remat,
          'parameters': layout.num_params, 'arguments_gib': round(arguments / GIB, 3),
          'temporaries_gib': round(temporaries / GIB, 3),
          'output_gib': round(analysis.output_size_in_bytes / GIB, 3),
          'aliased_gib': round(analysis.alias_size_in_bytes / GIB, 3),
          'peak_gib': round((arguments + temporaries) / GIB, 3),
          'compile_s': round(compile_s, 1), 'backend': jax.default_backend()}


def _schedule(config):
  """The run's schedule shape; its values do not change the program's cost."""
  t = config.train
  total = max(t.num_steps, t.warmup_steps + 1, 2)
  return optim.config_schedule(t, optim.Lengths(total, max(t.warmup_steps, 1), total // 2,
                                                total * 3 // 4))


def _placed(tree, sharding):
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


def lower_for(config: ml_collections.ConfigDict, target: accelerators.Target,
              global_batch_size: int, mode: str = 'train'):
  """The step lowered for `target`'s devices (nothing runs); returns it."""
  if mode not in MODES:
    raise ValueError(f'--mode={mode!r}: expected one of {MODES}')
  mesh = parallel.create_mesh(config.model_parallelism, devices=target.devices)
  if global_batch_size % mesh.shape['data']:
    raise ValueError(f'--global_batch_size={global_batch_size} does not divide by the '
                     f'{mesh.shape["data"]} devices of {target.spec}')
  replicated = parallel.replicated(mesh)
  split = parallel.batch_sharding(mesh)
  abstract_vars = abstract_variables(config)
  with platforms.target(target.platform):
    if mode == 'train':
      layout = optim.ParamLayout(abstract_vars, config.train.freeze_regex)
      state = _placed(jax.eval_shape(lambda v: create_state(v, layout, config), abstract_vars),
                      replicated)
      segments = jax.ShapeDtypeStruct((layout.num_params,), np.int32, sharding=replicated)
      step = jit_train_step(config, layout, _schedule(config), mesh)
      lowered = step.lower(state, _placed(batch_spec(config, global_batch_size), split), segments)
    else:
      step = evaluate.jit_eval_step(config, mesh)
      lowered = step.lower(_placed(abstract_vars, replicated),
                           _placed(evaluate.eval_batch_spec(config, global_batch_size), split))
    return lowered


def compile_for(config: ml_collections.ConfigDict, target: accelerators.Target,
                global_batch_size: int, mode: str = 'train'):
  """The step compiled for `target`'s devices (nothing runs); returns it."""
  return lower_for(config, target, global_batch_size, mode).compile()


def target_config(config: ml_collections.ConfigDict,
                  target: accelerators.Target) -> ml_collections.ConfigDict:
  """A copy of `config` with 'auto' choices made for the target, not the host."""
  config = ml_collections.ConfigDict(config.to_dict())
  with platforms.target(target.platform):
    config.model.conv_impl = layers.resolve_conv_impl(config.model.conv_impl)
  return config


def target_report(config: ml_collections.ConfigDict, target: accelerators.Target,
                  global_batch_size: int, mode: str = 'train', hlo_path: str = '',
                  breakdown: int = 0) -> dict:
  """What the compiled step needs and costs on each device of `target`;
  `hlo_path`: where to write the optimized program's text (XLA's per-op choices);
  `breakdown`: how many of the model's most expensive parts to list (TPU)."""
  config = target_config(config, target)
  start = time.perf_counter()
  try:
    lowered = lower_for(config, target, global_batch_size, mode)
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    return _does_not_fit(config, target, global_batch_size, mode, str(e),
                         time.perf_counter() - start)
  compile_s = time.perf_counter() - start
  if hlo_path:
    with open(hlo_path, 'w') as f:
      f.write(compiled.as_text())
  return report(compiled, config, target, global_batch_size, mode, compile_s, lowered, breakdown)


def _does_not_fit(config, target, global_batch_size, mode, message, compile_s) -> dict:
  """XLA:TPU refuses to compile a program over the HBM; its message says by how much."""
  needed = re.search(r'required for HLO temporaries \(([\d.]+)G\)', message)
  devices = len(target.devices)
  line = next((l for l in message.splitlines() if 'RESOURCE_EXHAUSTED' in l), message[:300])
  return {
      'model': config.model.name, 'mode': mode, 'target': target.spec, 'chip': target.chip.name,
      'devices': devices, 'hosts': target.num_hosts, 'global_batch_size': global_batch_size,
      'images_per_device': global_batch_size / devices, 'precision': config.model.dtype,
      'remat': bool(config.model.remat), 'conv_impl': config.model.conv_impl,
      'image_size': list(batch_spec(config, 1)['image'].shape[1:3]), 'fits': False, 'hbm_bytes_per_device': int(target.chip.hbm_bytes_per_device),
      'temp_bytes_per_device': int(float(needed.group(1)) * GIB) if needed else None,
      'peak_bytes_per_device': None, 'estimated_step_s': None, 'flops_per_image': None,
      'estimated_images_per_sec_per_chip': None, 'xla_error': line.strip(),
      'compile_s': round(compile_s, 1)}


def report(compiled, config: ml_collections.ConfigDict, target: accelerators.Target,
           global_batch_size: int, mode: str, compile_s: float, lowered=None,
           breakdown: int = 0) -> dict:
  """`compiled`'s figures per device and per chip (see the module docstring);
  for a GPU `lowered` too, whose program gives the FLOPs; `breakdown`: as in
  `target_report`."""
  memory = compiled.memory_analysis()
  hlo = compiled.as_text()
  chip = target.chip
  devices = len(target.devices)
  peak = memory.peak_memory_in_bytes or memory.argument_size_in_bytes + memory.temp_size_in_bytes
  hbm = chip.hbm_bytes_per_device
  needed = peak + memory.generated_code_size_in_bytes
  if target.platform == 'gpu':
    # XLA's GPU compiler has no cost analysis without the device: the FLOPs are
    # the program's before optimization, and there is no time estimate.
    flops, accessed = accelerators.hlo_flops(lowered) / devices, None
    optimal_s = step_s = None
  else:
    (cost,) = accelerators.per_device(compiled.cost_analysis())
    flops, accessed = float(cost['flops']), float(cost['bytes accessed'])
    optimal_s, step_s = float(cost['optimal_seconds']), accelerators.estimated_seconds(cost, hlo)
  per_chip = chip.devices_per_chip
  # No step is faster than its FLOPs at the chip's peak: an estimate below that
  # means an op the cost model mis-scores (accelerators.UNCOSTED_CUSTOM_CALLS).
  flop_floor_s = flops * per_chip / chip.bf16_flops
  usable = step_s is not None and step_s >= flop_floor_s
  per_image = lambda x: x * devices / global_batch_size if x is not None else None
  return {
      'model': config.model.name, 'mode': mode, 'target': target.spec, 'chip': chip.name,
      'devices': devices, 'hosts': target.num_hosts, 'global_batch_size': global_batch_size,
      'images_per_device': global_batch_size / devices, 'precision': config.model.dtype,
      'remat': bool(config.model.remat), 'conv_impl': config.model.conv_impl,
      'image_size': list(batch_spec(config, 1)['image'].shape[1:3]),
      'state_and_batch_bytes_per_device': int(memory.argument_size_in_bytes),
      'temp_bytes_per_device': int(memory.temp_size_in_bytes),
      'code_bytes_per_device': int(memory.generated_code_size_in_bytes),
      'peak_bytes_per_device': int(peak), 'hbm_bytes_per_device': int(hbm),
      'usable_bytes_per_device': int(hbm * chip.usable_fraction),
      'fits': bool(needed <= hbm * chip.usable_fraction),
      'headroom_bytes_per_device': int(hbm * chip.usable_fraction - needed),
      'estimated_step_s': step_s if usable else None,
      'xla_optimal_seconds': optimal_s, 'flop_floor_s': flop_floor_s,
      'uncosted_ops': accelerators.uncosted_ops(hlo),
      'flops_per_device': flops, 'bytes_accessed_per_device': accessed,
      'flops_per_image': per_image(flops), 'bytes_accessed_per_image': per_image(accessed),
      'estimated_images_per_sec_per_chip':
          global_batch_size / devices * per_chip / step_s if usable else None,
      'peak_flops_fraction': flop_floor_s / step_s if usable else None,
      'hbm_bandwidth_fraction':
          accessed * per_chip / step_s / chip.hbm_bytes_per_s if usable else None,
      'chip_bf16_flops': chip.bf16_flops, 'chip_hbm_bytes_per_s': chip.hbm_bytes_per_s,
      'all_reduce_bytes_per_device': accelerators.all_reduce_bytes(hlo),
      'compile_s': round(compile_s, 1),
      **({'cost_breakdown': hlo_costs.largest_parts(hlo, breakdown)} if breakdown else {}),
  }


def _print_target(r: dict):
  g = lambda b: f'{b / GIB:.2f} GiB'
  print(f"{r['model']} {r['mode']} step on {r['target']} ({r['devices']} x {r['chip']} devices, "
        f"{r['hosts']} host(s)), {r['global_batch_size']} images ({r['images_per_device']:g} per "
        f"device) at {r['image_size']}, {r['precision']}, remat {r['remat']}, "
        f"{r['conv_impl']} convolutions; "
        f"compiled in {r['compile_s']:.0f} s")
  if 'xla_error' in r:
    print(f"  DOES NOT FIT {g(r['hbm_bytes_per_device'])} of HBM per device: {r['xla_error']}")
    return
  usable = ('' if r['usable_bytes_per_device'] == r['hbm_bytes_per_device'] else
            f" ({g(r['usable_bytes_per_device'])} usable: JAX preallocates 75%)")
  print(f"  per device: {g(r['state_and_batch_bytes_per_device'])} state + batch, "
        f"{g(r['temp_bytes_per_device'])} temporaries, peak {g(r['peak_bytes_per_device'])} "
        f"+ {g(r['code_bytes_per_device'])} code of {g(r['hbm_bytes_per_device'])} HBM"
        f"{usable}: "
        f"{'fits' if r['fits'] else 'DOES NOT FIT'} ({g(r['headroom_bytes_per_device'])} left)")
  if r['xla_optimal_seconds'] is None:
    print(f"  no time estimate (XLA's GPU compiler has no cost model without the device); "
          f"{r['flops_per_image'] / 1e9:.1f} GFLOP per image, at least "
          f"{r['flop_floor_s'] * 1e3:.2f} ms per step at the chip's "
          f"{r['chip_bf16_flops'] / 1e12:.0f} TFLOP/s bf16 peak")
  elif r['estimated_step_s'] is None:
    print(f"  XLA's time estimate is not usable: "
          f"{r['xla_optimal_seconds'] + r['uncosted_ops']:.4g} s (with the -1 s of "
          f"{r['uncosted_ops']} uncosted ops undone) is below the "
          f"{r['flop_floor_s'] * 1e3:.2f} ms the FLOPs need at peak; "
          f"{r['flops_per_image'] / 1e9:.1f} GFLOP per image")
  else:
    print(f"  XLA's estimate: {r['estimated_step_s'] * 1e3:.1f} ms per step, "
          f"{r['estimated_images_per_sec_per_chip']:.1f} images/s per chip; "
          f"{r['flops_per_image'] / 1e9:.1f} GFLOP and {r['bytes_accessed_per_image'] / 1e9:.2f} GB "
          f"accessed per image; {100 * r['peak_flops_fraction']:.1f}% of the chip's "
          f"{r['chip_bf16_flops'] / 1e12:.0f} TFLOP/s bf16 peak, "
          f"{100 * r['hbm_bandwidth_fraction']:.0f}% of its {r['chip_hbm_bytes_per_s'] / 1e9:.0f} "
          f"GB/s HBM bandwidth (bytes accessed include on-chip traffic)")
  print(f"  all-reduce: {r['all_reduce_bytes_per_device'] / 2**20:.1f} MiB per device per step")
  if r.get('cost_breakdown'):
    print("  XLA's estimated cycles by model part, the largest first:")
    for part in r['cost_breakdown']:
      kinds = ', '.join(f'{k} {100 * f:.1f}%' for k, f in list(part['op_kinds'].items())[:3])
      print(f"  {100 * part['fraction']:5.1f}%  {part['part']}  ({part['ops']} ops: {kinds})")


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.precision:
    config.model.dtype = FLAGS.precision
  if FLAGS.target:
    accelerators.compile_only_host()
    target = accelerators.parse(FLAGS.target)
    batch = FLAGS.global_batch_size or FLAGS.per_device_batch * len(target.devices)
    if FLAGS.breakdown and target.platform != 'tpu':
      raise app.UsageError('--breakdown needs a TPU target (XLA:TPU costs each op)')
    result = target_report(config, target, batch, FLAGS.mode, FLAGS.hlo, FLAGS.breakdown)
    _print_target(result)
  else:
    if FLAGS.mode != 'train' or FLAGS.global_batch_size or FLAGS.hlo or FLAGS.breakdown:
      raise app.UsageError('--mode eval, --global_batch_size, --hlo and --breakdown need --target')
    result = train_step_memory(config, FLAGS.per_device_batch)
    print(f"{result['model']} train step, {result['per_device_batch']} images/device at "
          f"{result['image_size']}, {result['precision']}, remat {result['remat']}: "
          f"{result['peak_gib']:.2f} GiB per device ({result['arguments_gib']:.2f} state + batch, "
          f"{result['temporaries_gib']:.2f} temporaries) by XLA's {result['backend']} memory "
          f"analysis; compiled in {result['compile_s']:.0f} s")
  if FLAGS.json:
    print(json.dumps(result))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'e.g. effdet_jax/configs/efficientdet.py:d0')
  flags.DEFINE_integer('per_device_batch', 4, 'images on each device')
  flags.DEFINE_string('target', '', 'compile for these accelerators instead of the host: a TPU '
                      'slice (tpu:v5e:2x2, tpu:v3:4x4) or GPUs of one host (gpu:h200, gpu:h100:8)')
  flags.DEFINE_integer('global_batch_size', 0,
                       'images per step over the whole target (default: per_device_batch per device)')
  flags.DEFINE_enum('precision', '', ['', 'float32', 'bfloat16', 'float16'],
                    'overrides model.dtype (= train.precision)')
  flags.DEFINE_enum('mode', 'train', list(MODES), 'the step to compile (eval needs --target)')
  flags.DEFINE_string('hlo', '', 'with --target: write the compiled program (HLO text) here')
  flags.DEFINE_integer('breakdown', 0, 'with a TPU --target: list the N parts of the model '
                       "with the largest share of XLA's estimate (tools/hlo_costs.py)")
  flags.DEFINE_bool('json', False, 'print one JSON object as the last line')
  flags.mark_flags_as_required(['config'])
  cli.run(main)
