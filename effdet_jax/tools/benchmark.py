"""Speed of the model, measured: images/s after compilation, compile time, peak memory.

    python -m effdet_jax.tools.benchmark --config effdet_jax/configs/efficientdet.py:d0 \
        --mode infer --batch_size 8 [--precision bfloat16] [--json]

Modes:
  infer  the jitted network forward pass (inference-mode BatchNorm, chunked
         over the batch as `model.inference_chunk_size` says) on a
         device-resident batch.
  postprocess  the jitted post-processing (decode, pre-NMS top-k, NMS, clip,
         scale) of random head outputs, global or `--per_class` NMS.
  input  the training input pipeline (read, decode, clean, flip, scale jitter,
         crop, pad, batch) of `config.data` (`source='synthetic'` is written,
         once, to `data.synthetic.root`, default `$TMPDIR/effdet_jax_benchmark/
         data`), or with `--synthetic_dir DIR` of a generated COCO-JSON set of
         COCO-sized (640 px) JPEGs written there;
         `--threads` caps tf.data's threads. Also times the on-device anchor
         assignment of one of its batches (the train step does it).
  saved_model  an exported TF SavedModel (`--saved_model DIR`, from
         `effdet_jax.export`) run by TensorFlow: preprocessing, network and
         post-processing on a batch of uint8 images of the model's input size
         (`--image_size HxW` for another), through `serving_default`.
  tflite  an exported TFLite model (`--tflite FILE`) run by `tf.lite.Interpreter`
         with `--threads` threads (0: all cores) on one image of the model's
         input size: network and post-process op.
  train  the full jitted train step (forward, on-device anchor targets, loss,
         backward, clipping, SGD, EMA) on a device-resident batch of random
         images with 8 random boxes each, state donated as in training.
  compile  cold compiles of that train step (persistent cache off, in-memory
         caches cleared each repeat), split into tracing, lowering and XLA's
         compilation; `images_per_sec` is null.
  ops    each distinct convolution and matrix product of the network's
         inference forward pass on the whole batch (no chunking), timed alone,
         forward and backward (`op_profile.py`): the layer shapes a slow or
         hanging step spends its time in. `images_per_sec` is null; `ops`
         lists them, costliest first.
"""
import json
import os
import resource
import statistics
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from effdet_jax.data import input_pipeline, synthetic
from effdet_jax.detection import anchors as anchors_lib, postprocess, target_assigner
from effdet_jax.models import build_model, image_hw, inference, layers
from effdet_jax.models.variables import abstract_variables, init_variables
from effdet_jax.runtime import cli, huge_pages
from effdet_jax.tools import op_profile, timing
from effdet_jax.training import optim
from effdet_jax.training.step import batch_spec, create_state, make_train_step

FLAGS = flags.FLAGS
MODES = ('infer', 'postprocess', 'input', 'train', 'compile', 'ops', 'saved_model', 'tflite')


def benchmark_infer(config, batch_size: int, repeats: int, warmup: int):
  model = build_model(config)
  variables = init_variables(config, jax.random.PRNGKey(0))
  images = jax.random.normal(jax.random.PRNGKey(1), (batch_size, *image_hw(config), 3))
  forward = jax.jit(lambda v, x: inference.forward(model, v, x),
                    compiler_options=inference.compiler_options())
  result = _time(forward, (variables, images), batch_size, repeats, warmup, 'inference')
  result.update(_model_summary(config, batch_size, 'infer'),
                chunk_size=inference.chunk_size_for(config.model.inference_chunk_size, batch_size),
                devices=jax.device_count())
  return result


def benchmark_ops(config, batch_size: int, repeats: int, warmup: int):
  model = build_model(config)
  variables = abstract_variables(config)   # shapes are all that tracing needs
  images = jax.ShapeDtypeStruct((batch_size, *image_hw(config), 3), jnp.float32)
  ops = op_profile.collect(lambda v, x: model.apply(v, x, train=False), variables, images)
  rows = op_profile.profile(ops, repeats, warmup)
  rows.sort(key=lambda r: r['count'] * (r['forward_ms'] + r['backward_ms']), reverse=True)
  total = lambda key: round(sum(r['count'] * r[key] for r in rows), 3)
  return dict(_model_summary(config, batch_size, 'ops'), images_per_sec=None, ops=rows,
              forward_ms_total=total('forward_ms'), backward_ms_total=total('backward_ms'),
              compile_s=round(sum(r['compile_s'] for r in rows), 2),
              peak_host_memory_mib=_peak_host_memory_mib(),
              peak_device_memory_mib=_peak_device_memory_mib())


def benchmark_postprocess(config, batch_size: int, repeats: int, warmup: int, per_class: bool):
  m, p = config.model, config.postprocess
  height, width = image_hw(config)
  num_anchors = m.num_scales * len(m.aspect_ratios)
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 2 * (m.max_level - m.min_level + 1)))
  shapes = [(batch_size, -(-height // 2 ** l), -(-width // 2 ** l))
            for l in range(m.min_level, m.max_level + 1)]
  cls = [jax.random.normal(next(keys), (*s, num_anchors * m.num_classes)) - 4 for s in shapes]
  box = [jax.random.normal(next(keys), (*s, num_anchors * 4)) * 0.1 for s in shapes]
  anchors = jnp.asarray(anchors_lib.anchors_for(config))
  fn = jax.jit(lambda c, b: postprocess.postprocess(
      c, b, anchors, jnp.ones(batch_size), image_size=(height, width), num_classes=m.num_classes,
      **postprocess.settings(p, per_class)))
  result = _time(fn, (cls, box), batch_size, repeats, warmup, 'post-processing')
  result.update({'mode': 'postprocess', 'model': m.name, 'batch_size': batch_size,
                 'per_class': per_class, 'nms_method': p.nms_method,
                 'max_nms_inputs': p.max_nms_inputs, 'backend': jax.default_backend(),
                 'device': jax.devices()[0].device_kind})
  return result


def benchmark_input(config, batch_size: int, repeats: int, warmup: int, threads: int,
                    synthetic_dir: str):
  if synthetic_dir:
    synthetic.ensure_dataset(synthetic_dir, num_train=256, num_val=0, image_size=640)
    config.data.source = 'coco_json'
    config.data.train.annotations = synthetic.annotation_path(synthetic_dir, 'train')
    config.data.train.images = synthetic.image_dir(synthetic_dir, 'train')
    config.data.categories = ''
  elif config.data.source == 'synthetic':   # as training does, without its workdir
    config = synthetic.resolve(config, os.path.join(tempfile.gettempdir(), 'effdet_jax_benchmark'))
  config.train.global_batch_size = batch_size
  dataset = input_pipeline.train_data(config, process_index=0, process_count=1).dataset
  if threads:
    options = input_pipeline.tf.data.Options()
    options.threading.private_threadpool_size = threads
    dataset = dataset.with_options(options)
  batches = dataset.as_numpy_iterator()
  for _ in range(warmup):
    batch = next(batches)
  start = time.perf_counter()
  for _ in range(repeats):
    batch = next(batches)
  elapsed = time.perf_counter() - start

  m = config.model
  anchors = jnp.asarray(anchors_lib.anchors_for(config))
  sizes = anchors_lib.feature_sizes(image_hw(config), m.max_level)[m.min_level:]
  targets = jax.jit(lambda b, c, v: target_assigner.batch_targets(
      anchors, b, c, v, sizes, m.num_scales * len(m.aspect_ratios)))
  assign = _time(targets, tuple(jnp.asarray(batch[k]) for k in ('boxes', 'classes', 'image_valid')),
                 batch_size, repeats, 1, 'anchor targets')
  cores = threads or os.cpu_count()
  rate = repeats * batch_size / elapsed
  return {'mode': 'input', 'model': m.name, 'batch_size': batch_size,
          'image_size': list(image_hw(config)), 'source': config.data.source,
          'images_per_sec': round(rate, 2), 'threads': cores,
          'images_per_sec_per_core': round(rate / cores, 2),
          'boxes_per_image': round(float(np.mean(np.sum(batch['classes'] >= 0, axis=1))), 1),
          'targets_ms_per_batch': assign['step_ms_median'], 'compile_s': assign['compile_s'],
          'backend': jax.default_backend(),
          'peak_host_memory_mib': _peak_host_memory_mib()}


def _train_step_and_inputs(config, batch_size: int):
  """The jitted train step (state donated, as in training) and arguments for it: fresh
  state and a batch of random images with 8 random boxes each."""
  variables = init_variables(config, jax.random.PRNGKey(0))
  layout = optim.ParamLayout(jax.eval_shape(lambda: variables))
  schedule = optim.learning_rate_schedule(0.1, 0.01, 10, 1000)
  step = jax.jit(make_train_step(config, layout, schedule), donate_argnums=0)
  spec = batch_spec(config, batch_size)
  height, width = spec['image'].shape[1:3]
  m = spec['boxes'].shape[1]
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  corner = jax.random.uniform(keys[1], (batch_size, m, 2), maxval=0.7) * jnp.array([height, width])
  size = jax.random.uniform(keys[2], (batch_size, m, 2), minval=0.05, maxval=0.3) * jnp.array([height, width])
  batch = {'image': jax.random.normal(keys[0], spec['image'].shape).astype(spec['image'].dtype),
           'boxes': jnp.concatenate([corner, corner + size], axis=-1),
           'classes': jnp.where(jnp.arange(m) < 8, 1, -1) * jnp.ones((batch_size, 1), jnp.int32),
           'image_valid': jnp.ones((batch_size,), bool)}
  segments = jnp.asarray(layout.segment_ids())
  # Distinct buffers, all donated.
  state = jax.jit(lambda v: create_state(v, layout, config))(variables)
  return step, (state, batch, segments)


def _model_summary(config, batch_size: int, mode: str):
  """What was measured: the keys the model-running modes share."""
  return {'mode': mode, 'model': config.model.name, 'batch_size': batch_size,
          'image_size': list(image_hw(config)), 'precision': config.model.dtype,
          'conv_impl': layers.resolve_conv_impl(config.model.conv_impl),
          'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind}


def benchmark_train(config, batch_size: int, repeats: int, warmup: int):
  step, (state, batch, segments) = _train_step_and_inputs(config, batch_size)
  compiled, compile_s = timing.compile_timed(step, state, batch, segments, label='train step')

  def call():   # the state is donated: each step's output is the next one's input
    nonlocal state
    state = jax.block_until_ready(compiled(state, batch, segments))

  timed = timing.measure(call, repeats, warmup, label='train step')
  return dict(_model_summary(config, batch_size, 'train'), **_rates(timed, batch_size),
              compile_s=round(compile_s, 2), peak_host_memory_mib=_peak_host_memory_mib(),
              peak_device_memory_mib=_peak_device_memory_mib())


def benchmark_compile(config, batch_size: int, repeats: int):
  """Cold compiles of the train step, each phase timed: tracing the Python (jaxpr),
  lowering to StableHLO, and XLA's compilation. The persistent compilation cache is
  turned off and JAX's in-memory caches cleared before each repeat, so every repeat
  compiles from nothing."""
  jax.config.update('jax_enable_compilation_cache', False)
  step, args = _train_step_and_inputs(config, batch_size)
  phases = {'trace_s': [], 'lower_s': [], 'xla_compile_s': [], 'compile_s': []}
  for _ in range(repeats):
    jax.clear_caches()
    start = time.perf_counter()
    traced = step.trace(*args)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    for name, seconds in (('trace_s', traced_at - start), ('lower_s', lowered_at - traced_at),
                          ('xla_compile_s', done - lowered_at), ('compile_s', done - start)):
      phases[name].append(seconds)
  result = dict(_model_summary(config, batch_size, 'compile'), images_per_sec=None,
                repeats=repeats, peak_host_memory_mib=_peak_host_memory_mib())
  for name, values in phases.items():
    result[name] = round(statistics.median(values), 2)
  result['compile_s_min'] = round(min(phases['compile_s']), 2)
  return result


def benchmark_saved_model(directory: str, batch_size: int, repeats: int, warmup: int,
                          image_size):
  start = time.perf_counter()
  model = tf.saved_model.load(directory)
  load_s = time.perf_counter() - start
  serve = model.signatures['serving_default']
  if not image_size:   # the size it was exported for, else the model's input size
    with open(os.path.join(os.path.dirname(directory.rstrip('/')), 'export.json')) as f:
      summary = json.load(f)
    image_size = summary['saved_model']['image_size'] or summary['input_size']
  images = tf.constant(np.random.default_rng(0).integers(
      0, 256, (batch_size, *image_size, 3), dtype=np.uint8))
  # TF traces and compiles on the first call: that call's time is the "compile".
  timed = timing.measure(lambda: serve(images=images)['num_detections'].numpy(), repeats,
                         warmup + 1, label='SavedModel')
  return dict(_rates(timed, batch_size), mode='saved_model', saved_model=directory,
              batch_size=batch_size, image_size=list(image_size), load_s=round(load_s, 2),
              compile_s=round(timed['first_call_s'], 2), backend='tensorflow ' + tf.__version__,
              peak_host_memory_mib=_peak_host_memory_mib())


def benchmark_tflite(path: str, repeats: int, warmup: int, threads: int):
  interpreter = tf.lite.Interpreter(model_path=path, num_threads=threads or os.cpu_count())
  runner = interpreter.get_signature_runner('serving_default')
  detail = runner.get_input_details()['images']
  images = np.random.default_rng(0).integers(0, 256, detail['shape']).astype(detail['dtype'])
  timed = timing.measure(lambda: runner(images=images)['num_detections'], repeats, warmup + 1,
                         label='TFLite')
  return dict(_rates(timed, 1), mode='tflite', tflite=path, threads=threads or os.cpu_count(),
              image_size=[int(v) for v in detail['shape'][1:3]],
              input_dtype=np.dtype(detail['dtype']).name, bytes=os.path.getsize(path),
              backend='tflite ' + tf.__version__, peak_host_memory_mib=_peak_host_memory_mib())


def _time(fn, args, batch_size: int, repeats: int, warmup: int, label: str):
  compiled, compile_s = timing.compile_timed(fn, *args, label=label)
  timed = timing.measure(lambda: jax.block_until_ready(compiled(*args)), repeats, warmup, label)
  return dict(_rates(timed, batch_size), compile_s=round(compile_s, 2),
              peak_host_memory_mib=_peak_host_memory_mib(),
              peak_device_memory_mib=_peak_device_memory_mib())


def _rates(timed, batch_size: int):
  return {'images_per_sec': round(batch_size / timed['median_s'], 3),
          'step_ms_median': round(timed['median_s'] * 1e3, 2),
          'step_ms_min': round(timed['min_s'] * 1e3, 2),
          'first_call_s': round(timed['first_call_s'], 3)}


def _peak_host_memory_mib() -> int:
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _peak_device_memory_mib():
  """The accelerator allocator's high-water mark; None where the backend keeps none (CPU)."""
  stats = jax.devices()[0].memory_stats()
  return round(stats['peak_bytes_in_use'] / 2**20) if stats and 'peak_bytes_in_use' in stats else None


def _print_json(result):
  if FLAGS.json:
    print(json.dumps(dict(result, huge_pages=huge_pages.active())))


def main(argv):
  del argv
  if FLAGS.mode not in MODES:
    raise app.UsageError(f'--mode must be one of {MODES}, got {FLAGS.mode!r}')
  repeats = FLAGS.repeats or (3 if FLAGS.mode == 'compile' else 10)
  if FLAGS.mode == 'saved_model':
    if not FLAGS.saved_model:
      raise app.UsageError('--mode saved_model needs --saved_model DIR')
    size = [int(v) for v in FLAGS.image_size.lower().split('x')] if FLAGS.image_size else None
    result = benchmark_saved_model(FLAGS.saved_model, FLAGS.batch_size, repeats,
                                   FLAGS.warmup, size)
    print(f"SavedModel {result['saved_model']} batch {result['batch_size']} "
          f"{result['image_size'][0]}x{result['image_size'][1]} uint8 on {result['backend']}: "
          f"{result['images_per_sec']:.2f} images/s, {result['step_ms_median']:.1f} ms/call "
          f"(median of {repeats}), first call {result['compile_s']:.1f} s, peak host memory "
          f"{result['peak_host_memory_mib']} MiB")
    _print_json(result)
    return
  if FLAGS.mode == 'tflite':
    if not FLAGS.tflite:
      raise app.UsageError('--mode tflite needs --tflite FILE')
    result = benchmark_tflite(FLAGS.tflite, repeats, FLAGS.warmup, FLAGS.threads)
    print(f"TFLite {result['tflite']} ({result['bytes'] / 2**20:.1f} MiB, {result['input_dtype']} "
          f"{result['image_size'][0]}x{result['image_size'][1]}) on {result['threads']} threads: "
          f"{result['images_per_sec']:.2f} images/s, {result['step_ms_median']:.1f} ms/call "
          f"(median of {repeats})")
    _print_json(result)
    return
  if FLAGS.config is None:
    raise app.UsageError(f'--mode {FLAGS.mode} needs --config')
  config = FLAGS.config
  if FLAGS.precision:
    config.model.dtype = FLAGS.precision
  if FLAGS.mode == 'input':
    result = benchmark_input(config, FLAGS.batch_size, repeats, FLAGS.warmup, FLAGS.threads,
                             FLAGS.synthetic_dir)
    print(f"{result['model']} input pipeline ({result['source']}, {result['image_size']} px, jitter "
          f"{config.data.jitter_min}-{config.data.jitter_max}) batch {result['batch_size']}: "
          f"{result['images_per_sec']:.1f} images/s on {result['threads']} threads "
          f"({result['images_per_sec_per_core']:.1f} per core); anchor targets on "
          f"{result['backend']}: {result['targets_ms_per_batch']:.1f} ms/batch; peak host memory "
          f"{result['peak_host_memory_mib']} MiB")
    _print_json(result)
    return
  if FLAGS.mode == 'compile':
    result = benchmark_compile(config, FLAGS.batch_size, repeats)
    print(f"{result['model']} train step batch {result['batch_size']} {result['precision']} on "
          f"{result['backend']}: compile {result['compile_s']:.1f} s (median of {repeats}, min "
          f"{result['compile_s_min']:.1f}): trace {result['trace_s']:.1f} s, lower "
          f"{result['lower_s']:.1f} s, XLA {result['xla_compile_s']:.1f} s; peak host memory "
          f"{result['peak_host_memory_mib']} MiB")
    _print_json(result)
    return
  if FLAGS.mode == 'ops':
    result = benchmark_ops(config, FLAGS.batch_size, repeats, FLAGS.warmup)
    print(f"{result['model']} batch {result['batch_size']} {result['precision']} "
          f"({result['conv_impl']} convs) on {result['backend']} ({result['device']}): "
          f"{len(result['ops'])} distinct ops, each timed alone; summed over the network "
          f"forward {result['forward_ms_total']:.1f} ms, backward {result['backward_ms_total']:.1f} ms")
    for row in result['ops'][:10]:
      print(f"  x{row['count']:<3} {row['op']}: forward {row['forward_ms']:.3f} ms "
            f"({row['forward_gflops_per_sec']} GFLOP/s, {row['forward_gbytes_per_sec']} GB/s), "
            f"backward {row['backward_ms']:.3f} ms")
    _print_json(result)
    return
  if FLAGS.mode == 'train':
    result = benchmark_train(config, FLAGS.batch_size, repeats, FLAGS.warmup)
    what = f"{result['precision']} full train step"
  elif FLAGS.mode == 'infer':
    result = benchmark_infer(config, FLAGS.batch_size, repeats, FLAGS.warmup)
    what = f"{result['precision']} ({result['conv_impl']} convs)"
  else:
    result = benchmark_postprocess(config, FLAGS.batch_size, repeats, FLAGS.warmup,
                                   FLAGS.per_class)
    what = (f"{result['nms_method']} NMS, {'per class' if result['per_class'] else 'global'}, "
            f"top {result['max_nms_inputs']} inputs")
  device_memory = result.get('peak_device_memory_mib')
  print(f"{result['model']} {result['mode']} batch {result['batch_size']} {what} on "
        f"{result['backend']} ({result['device']}): "
        f"{result['images_per_sec']:.2f} images/s, "
        f"{result['step_ms_median']:.1f} ms/step (median of {repeats}, min "
        f"{result['step_ms_min']:.1f}), compile {result['compile_s']:.1f} s, first call "
        f"{result['first_call_s']:.2f} s, "
        f"peak host memory {result['peak_host_memory_mib']} MiB"
        + (f", peak device memory {device_memory} MiB" if device_memory is not None else ''))
  _print_json(result)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'e.g. effdet_jax/configs/efficientdet.py:d0')
  flags.DEFINE_string('mode', 'infer', f'one of {MODES}')
  flags.DEFINE_integer('batch_size', 1, 'images per step')
  flags.DEFINE_enum('precision', None, ['float32', 'bfloat16', 'float16'],
                    'overrides model.dtype')
  flags.DEFINE_integer('repeats', None, 'timed steps (default 10); compile mode: compiles (default 3)')
  flags.DEFINE_integer('warmup', 2, 'calls after compilation left out of the median; the first '
                       'is always made and timed alone (first_call_s)')
  flags.DEFINE_bool('json', False, 'print one JSON object as the last line')
  flags.DEFINE_bool('per_class', False, 'postprocess mode: NMS per class')
  flags.DEFINE_integer('threads', 0, 'input mode: tf.data threads; tflite mode: interpreter '
                       'threads (0: all cores)')
  flags.DEFINE_string('synthetic_dir', '', 'input mode: generate and read a synthetic COCO-JSON set here')
  flags.DEFINE_string('saved_model', '', 'saved_model mode: the SavedModel directory')
  flags.DEFINE_string('tflite', '', 'tflite mode: the .tflite file')
  flags.DEFINE_string('image_size', '', 'saved_model mode: HEIGHTxWIDTH of the images')
  cli.run(main)
