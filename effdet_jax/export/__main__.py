"""Command line of `effdet_jax.export` (see the package docstring and README "Export")."""
from absl import app, flags
from ml_collections import config_flags

from effdet_jax.export.exporter import FORMATS, export
from effdet_jax.export.saved_model import PLATFORMS
from effdet_jax.export.tflite import QUANTIZATIONS
from effdet_jax.runtime import cli, precision

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'e.g. effdet_jax/configs/efficientdet.py:d0')
flags.DEFINE_string('checkpoint', None, 'training workdir or checkpoints/<step> directory (EMA '
                    'weights), converted directory, bundle, or official TF checkpoint')
flags.DEFINE_string('output', None, 'directory to write bundle/, saved_model/, tf_checkpoint/, '
                    'tflite/ and export.json to')
flags.DEFINE_list('format', ['all'], f'some of {FORMATS}')
flags.DEFINE_string('categories', '', 'COCO annotation file or categories.json naming the '
                    "model's classes (default: the training run's, or COCO's for 90 classes)")
flags.DEFINE_bool('per_class_nms', None, 'NMS per class (default: config.postprocess.infer_per_class)')
flags.DEFINE_integer('batch_size', 1, 'SavedModel: images per module call')
flags.DEFINE_bool('static_batch', False, 'SavedModel: accept exactly --batch_size images per call')
flags.DEFINE_string('image_size', '', 'SavedModel: HEIGHTxWIDTH of serving_default images '
                    '(default: any size)')
flags.DEFINE_list('platforms', [], f'SavedModel: some of {PLATFORMS} (default: this machine\'s)')
flags.DEFINE_enum('quantize', 'none', QUANTIZATIONS, 'TFLite: float32 (none), float16 weights, '
                  'or int8 weights and activations (needs --calibration_images)')
flags.DEFINE_string('calibration_images', '', 'TFLite int8: a folder of photos like the ones the '
                    'model will see, to measure activation ranges on')
flags.DEFINE_integer('calibration_limit', 100, 'TFLite int8: photos of --calibration_images used '
                     'at most')
flags.mark_flags_as_required(['config', 'checkpoint', 'output'])


def _image_size(text: str):
  if not text:
    return None
  try:
    height, width = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise app.UsageError(f'--image_size must be HEIGHTxWIDTH, e.g. 480x640; got {text!r}') from None
  return height, width


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  precision.configure(FLAGS.config)   # a float64 run's checkpoint
  summary = export(FLAGS.config, FLAGS.checkpoint, FLAGS.output, FLAGS.format, FLAGS.categories,
                   FLAGS.per_class_nms, FLAGS.batch_size, FLAGS.static_batch,
                   _image_size(FLAGS.image_size), FLAGS.platforms, FLAGS.quantize,
                   FLAGS.calibration_images, FLAGS.calibration_limit)
  print(f"exported {summary['model']} (step {summary['step']}) from {summary['checkpoint']} "
        f"in {summary['seconds']:.1f} s:")
  for name in ('bundle', 'saved_model', 'tf_checkpoint', 'tflite'):
    if name in summary:
      part = summary[name]
      print(f"  {name}: {part['path']} ({part['bytes'] / 2**20:.1f} MiB, {part['seconds']:.1f} s)")


if __name__ == '__main__':
  cli.run(main)
