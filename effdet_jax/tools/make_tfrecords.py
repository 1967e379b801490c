"""COCO-JSON folder -> sharded TFRecords in the official EfficientDet layout.

    python -m effdet_jax.tools.make_tfrecords --annotations ann.json --images DIR \
        --output PREFIX --num_shards N

Writes `PREFIX-00000-of-0000N.tfrecord` ... and, beside them, the categories and
record counts (`tfrecord_info.json`). Annotations are written as they are
(cleaning happens when reading, where it is counted); images whose file is
missing are left out and reported. Images go round-robin over the shards so
shards are equal to within one record.
"""
import io
import json
import logging
import os

from absl import flags
from PIL import Image
import tensorflow as tf

from effdet_jax.data import coco_json, tfrecord
from effdet_jax.runtime import cli

FLAGS = flags.FLAGS


def image_size(encoded: bytes, json_height: int, json_width: int):
  """The image's own (height, width); the annotation file's if it cannot be read
  (such an image is counted as undecodable when read)."""
  try:
    with Image.open(io.BytesIO(encoded)) as image:
      return image.height, image.width
  except Exception:  # pylint: disable=broad-except
    if json_height > 0 and json_width > 0:
      return int(json_height), int(json_width)
    return 1, 1


def make_tfrecords(annotations: str, images: str, output: str, num_shards: int) -> dict:
  if num_shards < 1:
    raise ValueError(f'--num_shards must be at least 1, got {num_shards}')
  source = coco_json.CocoJsonSource(annotations, images)
  coco = source.coco
  folder = os.path.dirname(output) or '.'
  tf.io.gfile.makedirs(folder)
  paths = [f'{output}-{i:05d}-of-{num_shards:05d}.tfrecord' for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  counts = [0] * num_shards
  mismatched = 0
  written = 0
  for row in range(len(coco)):
    if source.missing[row]:
      continue
    with tf.io.gfile.GFile(source.paths[row], 'rb') as f:
      encoded = f.read()
    height, width = image_size(encoded, coco.heights[row], coco.widths[row])
    if coco.heights[row] > 0 and (height, width) != (coco.heights[row], coco.widths[row]):
      mismatched += 1
    rows = slice(coco.row_splits[row], coco.row_splits[row + 1])
    shard = written % num_shards
    writers[shard].write(tfrecord.serialize(
        encoded, int(coco.image_ids[row]), coco.file_names[row], height, width, coco.boxes[rows],
        coco.category_ids[rows], coco.is_crowd[rows], coco.areas[rows]))
    counts[shard] += 1
    written += 1
  for w in writers:
    w.close()
  tfrecord.write_info(folder, coco.categories, {os.path.basename(p): n for p, n in zip(paths, counts)})
  if mismatched:
    logging.warning('%d images have a size other than the annotation file says; boxes were '
                    'normalized by the real size', mismatched)
  return {'images_written': written, 'images_missing': int(source.missing.sum()),
          'annotations_without_image': coco.annotations_without_image,
          'size_mismatches': mismatched, 'shards': paths}


def main(argv):
  del argv
  summary = make_tfrecords(FLAGS.annotations, FLAGS.images, FLAGS.output, FLAGS.num_shards)
  print(f"wrote {summary['images_written']} images to {len(summary['shards'])} shards "
        f"({FLAGS.output}-*); left out: {summary['images_missing']} missing image files, "
        f"{summary['annotations_without_image']} annotations of unlisted images")
  print(json.dumps({k: v for k, v in summary.items() if k != 'shards'}))


if __name__ == '__main__':
  flags.DEFINE_string('annotations', None, 'COCO-JSON annotation file', required=True)
  flags.DEFINE_string('images', None, 'folder the file_names are relative to', required=True)
  flags.DEFINE_string('output', None, 'output prefix, e.g. /data/coco/train', required=True)
  flags.DEFINE_integer('num_shards', 8, 'number of TFRecord files')
  cli.run(main)
