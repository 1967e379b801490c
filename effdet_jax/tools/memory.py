"""Per-device memory of the train step, from XLA's memory analysis, without running it.

    python -m effdet_jax.tools.memory --config configs/efficientdet.py:d4 \
        --per_device_batch 4 [--config.model.remat=True] [--json]

Compiles the full train step (forward, targets, loss, backward, SGD, EMA) for
one device holding `per_device_batch` images, the share each device of a data
parallel run holds, and prints XLA's figures: the state and batch (arguments),
the step's temporaries (activations kept for the backward pass dominate), and
their sum, the peak the step needs. The numbers are for the backend it runs on
(XLA's CPU compiler here; run it on a TPU VM for TPU figures).
"""
import json
import time

from absl import app, flags
import jax
import numpy as np
from ml_collections import config_flags

from effdet_jax import convert, optim
from effdet_jax.train_step import batch_spec, create_state, make_train_step

FLAGS = flags.FLAGS
GIB = 2**30


def train_step_memory(config, per_device_batch: int):
  abstract_vars = convert.abstract_variables(config)
  layout = optim.ParamLayout(abstract_vars, config.train.freeze_regex)
  state = jax.eval_shape(lambda v: create_state(v, layout), abstract_vars)
  batch = batch_spec(config, per_device_batch)
  segments = jax.ShapeDtypeStruct((layout.num_params,), np.int32)
  schedule = optim.learning_rate_schedule(0.1, 0.01, 1, 10)
  start = time.perf_counter()
  compiled = jax.jit(make_train_step(config, layout, schedule), donate_argnums=0).lower(
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


def main(argv):
  del argv
  result = train_step_memory(FLAGS.config, FLAGS.per_device_batch)
  print(f"{result['model']} train step, {result['per_device_batch']} images/device at "
        f"{result['image_size']}, {result['precision']}, remat {result['remat']}: "
        f"{result['peak_gib']:.2f} GiB per device ({result['arguments_gib']:.2f} state + batch, "
        f"{result['temporaries_gib']:.2f} temporaries) by XLA's {result['backend']} memory analysis; "
        f"compiled in {result['compile_s']:.0f} s")
  if FLAGS.json:
    print(json.dumps(result))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'e.g. configs/efficientdet.py:d0')
  flags.DEFINE_integer('per_device_batch', 4, 'images on each device')
  flags.DEFINE_bool('json', False, 'print one JSON object as the last line')
  flags.mark_flags_as_required(['config'])
  app.run(main)
