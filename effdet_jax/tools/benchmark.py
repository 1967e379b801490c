"""Speed of the model, measured: images/s after compilation, compile time, peak memory.

    python -m effdet_jax.tools.benchmark --config configs/efficientdet.py:d0 \
        --mode infer --batch_size 8 [--precision bfloat16] [--json]

Modes:
  infer  the jitted network forward pass (inference-mode BatchNorm, chunked
         over the batch as `model.inference_chunk_size` says) on a
         device-resident batch.
Training, input-pipeline and post-processing modes are added with the parts
they measure.
"""
import json
import resource
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from effdet_jax.convert import init_variables
from effdet_jax.models import build_model, image_hw, inference, layers

FLAGS = flags.FLAGS
MODES = ('infer',)


def benchmark_infer(config, batch_size: int, repeats: int, warmup: int):
  model = build_model(config)
  variables = init_variables(config, jax.random.PRNGKey(0))
  images = jax.random.normal(jax.random.PRNGKey(1), (batch_size, *image_hw(config), 3))
  forward = jax.jit(lambda v, x: inference.forward(model, v, x))
  start = time.perf_counter()
  compiled = forward.lower(variables, images).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    jax.block_until_ready(compiled(variables, images))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(variables, images))
    times.append(time.perf_counter() - start)
  step = statistics.median(times)
  return {'mode': 'infer', 'model': config.model.name, 'batch_size': batch_size,
          'image_size': list(image_hw(config)), 'precision': config.model.dtype,
          'conv_impl': layers.resolve_conv_impl(config.model.conv_impl),
          'chunk_size': inference.chunk_size_for(config.model.inference_chunk_size, batch_size),
          'backend': jax.default_backend(), 'devices': jax.device_count(),
          'images_per_sec': round(batch_size / step, 3), 'step_ms_median': round(step * 1e3, 2),
          'step_ms_min': round(min(times) * 1e3, 2), 'compile_s': round(compile_s, 2),
          'peak_host_memory_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main(argv):
  del argv
  if FLAGS.mode not in MODES:
    raise app.UsageError(f'--mode must be one of {MODES}, got {FLAGS.mode!r}')
  config = FLAGS.config
  if FLAGS.precision:
    config.model.dtype = FLAGS.precision
  result = benchmark_infer(config, FLAGS.batch_size, FLAGS.repeats, FLAGS.warmup)
  print(f"{result['model']} {result['mode']} batch {result['batch_size']} "
        f"{result['precision']} on {result['backend']} ({result['conv_impl']} convs): "
        f"{result['images_per_sec']:.2f} images/s, {result['step_ms_median']:.1f} ms/step "
        f"(median of {FLAGS.repeats}), compile {result['compile_s']:.1f} s, "
        f"peak host memory {result['peak_host_memory_mib']} MiB")
  if FLAGS.json:
    print(json.dumps(result))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'e.g. configs/efficientdet.py:d0')
  flags.DEFINE_string('mode', 'infer', f'one of {MODES}')
  flags.DEFINE_integer('batch_size', 1, 'images per step')
  flags.DEFINE_enum('precision', None, ['float32', 'bfloat16'], 'overrides model.dtype')
  flags.DEFINE_integer('repeats', 10, 'timed steps')
  flags.DEFINE_integer('warmup', 2, 'untimed steps after compilation')
  flags.DEFINE_bool('json', False, 'print one JSON object as the last line')
  flags.mark_flags_as_required(['config'])
  app.run(main)
