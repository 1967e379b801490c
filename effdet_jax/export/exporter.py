"""From any checkpoint to the export formats: the weights for inference (EMA
weights of a training checkpoint), and the categories the model's classes stand
for, found once and written into every format."""
import json
import os
import time
from typing import Dict, Optional, Sequence, Tuple

import ml_collections
import tensorflow as tf

from effdet_jax.data import categories as categories_lib
from effdet_jax.data.coco_labels import label_name
from effdet_jax.export import bundle as bundle_lib
from effdet_jax.export import saved_model as saved_model_lib
from effdet_jax.export import tf_checkpoint as tf_checkpoint_lib
from effdet_jax.export import tflite as tflite_lib
from effdet_jax.models import image_hw
from effdet_jax.training import weights

FORMATS = ('bundle', 'saved_model', 'tf_checkpoint', 'tflite', 'all')
BUNDLE_DIR = 'bundle'
SAVED_MODEL_DIR = 'saved_model'
TF_CHECKPOINT_DIR = 'tf_checkpoint'
TFLITE_DIR = 'tflite'
TFLITE_FILE = 'model.tflite'
SUMMARY_FILE = 'export.json'
COCO_MODEL_CLASSES = 90


def categories_for(config: ml_collections.ConfigDict, path: str, workdir: Optional[str],
                   categories_file: str = '') -> categories_lib.CategoryMap:
  """What the model's classes mean: `categories_file` (a COCO annotation file or a
  `categories.json`), else the training run's or the bundle's `categories.json`,
  else, for a 90-class model (the official ones), COCO's ids `class + 1`."""
  num_classes = config.model.num_classes
  scheme = config.data.category_scheme
  if categories_file:
    found = categories_lib.read_categories_file(categories_file, scheme)
    source = categories_file
  else:
    candidates = [os.path.join(d, categories_lib.FILENAME) for d in (workdir, path) if d]
    existing = [c for c in candidates if tf.io.gfile.exists(c)]
    if existing:
      found, source = categories_lib.CategoryMap.load(existing[0]), existing[0]
    elif num_classes == COCO_MODEL_CLASSES:
      return categories_lib.CategoryMap.build(
          [{'id': c + 1, 'name': label_name(c + 1)} for c in range(num_classes)], 'id_minus_one')
    else:
      raise ValueError(f'{path}: cannot tell which dataset categories the model\'s {num_classes} '
                       f'classes stand for; pass --categories (a COCO annotation file or a '
                       f'categories.json)')
  found.check_model(num_classes, source)
  return found


def export(config: ml_collections.ConfigDict, checkpoint_path: str, output: str,
           formats: Sequence[str] = ('all',), categories_file: str = '',
           per_class: Optional[bool] = None, batch_size: int = 1, static_batch: bool = False,
           image_size: Optional[Tuple[int, int]] = None,
           platforms: Sequence[str] = (), quantize: str = 'none',
           calibration_images: str = '', calibration_limit: int = 100) -> Dict:
  """Write `output/bundle`, `output/saved_model`, `output/tf_checkpoint` and/or
  `output/tflite/model.tflite` (with the `categories.json` its class indices
  stand for), and `output/export.json` (what was written, from which
  checkpoint, sizes and times); returns the latter.

  `quantize`, `calibration_images` (a folder of photos) and `calibration_limit`
  (photos used at most) are for the TFLite model (see export/tflite.py).
  """
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ValueError(f'unsupported export format(s) {unknown or formats}; expected some of '
                     f'{FORMATS}')
  formats = FORMATS[:-1] if 'all' in formats else tuple(dict.fromkeys(formats))
  start = time.perf_counter()
  # Inference formats take the EMA weights where there are two sets; the official
  # layout takes both.
  loaded = weights.load_weights(checkpoint_path, config)
  step, raw, ema, variables = loaded.step, loaded.raw, loaded.ema, loaded.variables
  categories = categories_for(config, checkpoint_path, loaded.workdir, categories_file)
  summary = {'model': config.model.name, 'checkpoint': checkpoint_path, 'step': step,
             'input_size': list(image_hw(config)), 'num_classes': config.model.num_classes,
             'categories': len(categories.ids),
             'load_seconds': round(time.perf_counter() - start, 1)}
  tf.io.gfile.makedirs(output)
  if 'bundle' in formats:
    target = os.path.join(output, BUNDLE_DIR)
    begin = time.perf_counter()
    bundle_lib.write_bundle(target, config, variables, categories, checkpoint_path, step)
    summary['bundle'] = {'path': target, 'bytes': _size(target),
                         'seconds': round(time.perf_counter() - begin, 1)}
  if 'saved_model' in formats:
    target = os.path.join(output, SAVED_MODEL_DIR)
    info = saved_model_lib.export_saved_model(
        target, config, variables, categories, per_class=per_class, batch_size=batch_size,
        static_batch=static_batch, image_size=image_size, platforms=platforms)
    summary['saved_model'] = {'path': target, 'bytes': _size(target),
                              'seconds': info.export_seconds, 'platforms': list(info.platforms),
                              'batch_size': info.batch_size, 'static_batch': info.static_batch,
                              'image_size': info.image_size,
                              'stablehlo_version': info.stablehlo_version,
                              'tensorflow': tf.__version__}
  if 'tf_checkpoint' in formats:
    target = os.path.join(output, TF_CHECKPOINT_DIR)
    begin = time.perf_counter()
    tf_checkpoint_lib.write_tf_checkpoint(target, config, raw, ema, step)
    summary['tf_checkpoint'] = {'path': target, 'bytes': _size(target), 'ema': ema is not None,
                                'seconds': round(time.perf_counter() - begin, 1)}
  if 'tflite' in formats:
    target = os.path.join(output, TFLITE_DIR)
    calibration = (tflite_lib.calibration_images(calibration_images, config, calibration_limit)
                   if calibration_images else None)
    info = tflite_lib.export_tflite(os.path.join(target, TFLITE_FILE), config, variables,
                                    quantize=quantize, calibration=calibration)
    categories.save(os.path.join(target, categories_lib.FILENAME))
    summary['tflite'] = {'path': os.path.join(target, TFLITE_FILE), 'bytes': info.bytes,
                         'seconds': info.export_seconds, 'quantize': info.quantize,
                         'calibration_images': info.calibration_images,
                         'tensorflow': tf.__version__}
  summary['seconds'] = round(time.perf_counter() - start, 1)
  with tf.io.gfile.GFile(os.path.join(output, SUMMARY_FILE), 'w') as f:
    json.dump(summary, f, indent=1)
  return summary


def _size(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(directory) for name in names)
