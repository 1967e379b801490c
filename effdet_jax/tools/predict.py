"""Detect objects in image files; write JSON and, optionally, pictures with boxes.

    python -m effdet_jax.tools.predict --config effdet_jax/configs/efficientdet.py:d0 \
        --checkpoint PATH --output detections.json [--draw_dir DIR] IMAGE [IMAGE ...]
    python -m effdet_jax.tools.predict --bundle DIR ... IMAGE [IMAGE ...]

PATH is an official TF checkpoint (directory, prefix or .tar.gz), a directory
written by `effdet_jax.tools.convert`, or a training workdir (its latest EMA weights)
or one of its `checkpoints/<step>` directories; DIR is an inference bundle
written by `effdet_jax.export` (it carries its config and category names).
`detections.json` holds one entry per image: `{"image", "height", "width",
"detections": [{"box": [ymin, xmin, ymax, xmax], "score", "category_id",
"label"}, ...]}` with boxes in original pixels; a file that cannot be read is
skipped, its entry `{"image", "error"}`, and the command then exits with status 1.
"""
import json
import os
from typing import List, Optional, Sequence

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags
import numpy as np
from PIL import Image

from effdet_jax.data.coco_labels import label_name
from effdet_jax.data.image_files import load_image
from effdet_jax.export.bundle import load_bundle
from effdet_jax.inference.detector import Detector
from effdet_jax.inference.visualize import count_drawn, draw_boxes
from effdet_jax.runtime import cli
from effdet_jax.training import weights

FLAGS = flags.FLAGS


def to_entries(paths: Sequence[str], images: Sequence[np.ndarray], results,
               label=label_name) -> List[dict]:
  entries = []
  for path, image, result in zip(paths, images, results):
    detections = [{'box': [round(float(c), 3) for c in box], 'score': round(float(score), 6),
                   'category_id': int(cid), 'label': label(cid)}
                  for box, score, cid in zip(result['boxes'], result['scores'],
                                             result['category_ids'])]
    entries.append({'image': path, 'height': int(image.shape[0]), 'width': int(image.shape[1]),
                    'detections': detections})
  return entries


def detect_files(detector: Detector, image_paths: Sequence[str], output: str,
                 draw_dir: Optional[str] = None, draw_min_score: float = 0.3) -> List[dict]:
  """Run `detector` on image files; write `output` (JSON) and the pictures.

  A file that cannot be read is skipped, not fatal: its entry is `{"image",
  "error"}`, in its place in the list.
  """
  loaded, errors = {}, {}
  for path in image_paths:
    try:
      loaded[path] = load_image(path)
    except ValueError as e:
      errors[path] = str(e)
  images = list(loaded.values())
  by_path = dict(zip(loaded, to_entries(list(loaded), images, detector(images) if images else [],
                                        detector.label)))
  entries = [by_path[p] if p in by_path else {'image': p, 'error': errors[p]} for p in image_paths]
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, 'w') as f:
    json.dump(entries, f, indent=1)
  if draw_dir:
    os.makedirs(draw_dir, exist_ok=True)
    for path, image in loaded.items():
      entry = by_path[path]
      target = os.path.join(draw_dir, os.path.splitext(os.path.basename(path))[0] + '.png')
      Image.fromarray(draw_boxes(image, entry['detections'], draw_min_score)).save(target)
      count = count_drawn(entry['detections'], draw_min_score)
      logging.info('%s: drew %d of %d detections (score >= %g)', target, count,
                   len(entry['detections']), draw_min_score)
  return entries


def predict(config: ml_collections.ConfigDict, checkpoint_path: str, image_paths: Sequence[str],
            output: str, draw_dir: Optional[str] = None, draw_min_score: float = 0.3,
            per_class: Optional[bool] = None, batch_size: int = 1) -> List[dict]:
  variables = weights.load_weights(checkpoint_path, config).variables
  detector = Detector(config, variables, per_class=per_class, batch_size=batch_size)
  return detect_files(detector, image_paths, output, draw_dir, draw_min_score)


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('give one or more image files after the flags')
  if FLAGS.bundle:
    if FLAGS.checkpoint:
      raise app.UsageError('give --bundle or --config with --checkpoint, not both')
    detector = load_bundle(FLAGS.bundle, per_class=FLAGS.per_class_nms,
                           batch_size=FLAGS.batch_size)
    entries = detect_files(detector, paths, FLAGS.output, FLAGS.draw_dir, FLAGS.draw_min_score)
  elif FLAGS.config is None or not FLAGS.checkpoint:
    raise app.UsageError('give --config and --checkpoint, or --bundle')
  else:
    entries = predict(FLAGS.config, FLAGS.checkpoint, paths, FLAGS.output, FLAGS.draw_dir,
                      FLAGS.draw_min_score, FLAGS.per_class_nms, FLAGS.batch_size)
  for entry in entries:
    if 'error' in entry:
      print(f"{entry['image']}: skipped (unreadable)")
      continue
    top = entry['detections'][:3]
    print(f"{entry['image']}: {len(entry['detections'])} detections; top: " +
          ', '.join(f"{d['label']} {d['score']:.2f} at {[round(c) for c in d['box']]}"
                    for d in top))
  print(f'wrote {FLAGS.output}')
  skipped = [e for e in entries if 'error' in e]
  if skipped:
    raise ValueError(f'{len(skipped)} of {len(entries)} images could not be read and were '
                     f'skipped (their "error" is in {FLAGS.output}): {skipped[0]["error"]}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'e.g. effdet_jax/configs/efficientdet.py:d0')
  flags.DEFINE_string('checkpoint', None, 'training workdir or checkpoints/<step> directory, '
                      'converted directory, or official TF checkpoint')
  flags.DEFINE_string('bundle', None, 'an inference bundle from effdet_jax.export (instead of '
                      '--config and --checkpoint)')
  flags.DEFINE_string('output', 'detections.json', 'JSON file to write')
  flags.DEFINE_string('draw_dir', None, 'write one PNG per image with boxes drawn')
  flags.DEFINE_float('draw_min_score', 0.3, 'draw detections scoring at least this')
  flags.DEFINE_bool('per_class_nms', None, 'NMS per class (default: config.postprocess.infer_per_class)')
  flags.DEFINE_integer('batch_size', 1, 'images per network call')
  cli.run(main)
