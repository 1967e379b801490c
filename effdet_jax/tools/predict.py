"""Detect objects in image files; write JSON and, optionally, pictures with boxes.

    python -m effdet_jax.tools.predict --config configs/efficientdet.py:d0 \
        --checkpoint PATH --output detections.json [--draw_dir DIR] IMAGE [IMAGE ...]

PATH is an official TF checkpoint (directory, prefix or .tar.gz) or a directory
written by `effdet_jax.convert`. `detections.json` holds one entry per image:
`{"image", "height", "width", "detections": [{"box": [ymin, xmin, ymax, xmax],
"score", "category_id", "label"}, ...]}` with boxes in original pixels.
"""
import json
import os
from typing import List, Optional, Sequence

from absl import app, flags, logging
import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from effdet_jax import checkpoint
from effdet_jax.coco_labels import label_name
from effdet_jax.detector import Detector

FLAGS = flags.FLAGS


def load_image(path: str) -> np.ndarray:
  """RGB uint8 from any format PIL reads (grayscale, RGBA, CMYK, palette converted)."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read image {path!r}: {e}') from e


def to_entries(paths: Sequence[str], images: Sequence[np.ndarray], results) -> List[dict]:
  entries = []
  for path, image, result in zip(paths, images, results):
    detections = [{'box': [round(float(c), 3) for c in box], 'score': round(float(score), 6),
                   'category_id': int(cid), 'label': label_name(cid)}
                  for box, score, cid in zip(result['boxes'], result['scores'],
                                             result['category_ids'])]
    entries.append({'image': path, 'height': int(image.shape[0]), 'width': int(image.shape[1]),
                    'detections': detections})
  return entries


_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def draw(image: np.ndarray, entry: dict, min_score: float, path: str) -> int:
  """Boxes with `label score` tags; returns how many were drawn."""
  canvas = Image.fromarray(image)
  pen = ImageDraw.Draw(canvas)
  size = max(image.shape[:2])
  line = max(2, size // 250)
  font = ImageFont.load_default(size=max(12, size // 40))
  drawn = 0
  for det in sorted(entry['detections'], key=lambda d: d['score']):
    if det['score'] < min_score:
      continue
    ymin, xmin, ymax, xmax = det['box']
    color = _PALETTE[det['category_id'] % len(_PALETTE)]
    pen.rectangle([xmin, ymin, xmax, ymax], outline=color, width=line)
    text = f"{det['label']} {det['score']:.2f}"
    left, top, right, bottom = pen.textbbox((xmin, ymin), text, font=font)
    top_y = ymin - (bottom - top) - 2 * line if ymin - (bottom - top) - 2 * line >= 0 else ymin
    pen.rectangle([xmin, top_y, xmin + (right - left) + 2 * line, top_y + (bottom - top) + 2 * line],
                  fill=color)
    pen.text((xmin + line, top_y + line - (top - ymin)), text, fill=(0, 0, 0), font=font)
    drawn += 1
  canvas.save(path)
  return drawn


def predict(config: ml_collections.ConfigDict, checkpoint_path: str, image_paths: Sequence[str],
            output: str, draw_dir: Optional[str] = None, draw_min_score: float = 0.3,
            per_class: Optional[bool] = None, batch_size: int = 1) -> List[dict]:
  variables = checkpoint.load_variables(checkpoint_path, config)
  detector = Detector(config, variables, per_class=per_class, batch_size=batch_size)
  images = [load_image(p) for p in image_paths]
  entries = to_entries(image_paths, images, detector(images))
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, 'w') as f:
    json.dump(entries, f, indent=1)
  if draw_dir:
    os.makedirs(draw_dir, exist_ok=True)
    for path, image, entry in zip(image_paths, images, entries):
      target = os.path.join(draw_dir, os.path.splitext(os.path.basename(path))[0] + '.png')
      count = draw(image, entry, draw_min_score, target)
      logging.info('%s: drew %d of %d detections (score >= %g)', target, count,
                   len(entry['detections']), draw_min_score)
  return entries


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('give one or more image files after the flags')
  entries = predict(FLAGS.config, FLAGS.checkpoint, paths, FLAGS.output, FLAGS.draw_dir,
                    FLAGS.draw_min_score, FLAGS.per_class_nms, FLAGS.batch_size)
  for entry in entries:
    top = entry['detections'][:3]
    print(f"{entry['image']}: {len(entry['detections'])} detections; top: " +
          ', '.join(f"{d['label']} {d['score']:.2f} at {[round(c) for c in d['box']]}"
                    for d in top))
  print(f'wrote {FLAGS.output}')


if __name__ == '__main__':
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'e.g. configs/efficientdet.py:d0')
  flags.DEFINE_string('checkpoint', None, 'official TF checkpoint or converted directory')
  flags.DEFINE_string('output', 'detections.json', 'JSON file to write')
  flags.DEFINE_string('draw_dir', None, 'write one PNG per image with boxes drawn')
  flags.DEFINE_float('draw_min_score', 0.3, 'draw detections scoring at least this')
  flags.DEFINE_bool('per_class_nms', None, 'NMS per class (default: config.postprocess.infer_per_class)')
  flags.DEFINE_integer('batch_size', 1, 'images per network call')
  flags.mark_flags_as_required(['config', 'checkpoint'])
  app.run(main)
