"""Bad data: decode what can be decoded, fix what can be fixed, count the rest.

Nothing here removes an element from the stream: an image that cannot be read
stays as a 1x1 placeholder flagged `image_valid=False` (the loss ignores it).
Keeping the count of elements fixed is what lets a resumed run skip to its
position before decoding anything. Every image or box left out is counted under
exactly one reason, in the order of the tuples below (a crowd box of an unknown
category counts as `unknown_category`).
"""
from typing import Dict

import tensorflow as tf

IMAGE_SKIP_REASONS = ('missing_file', 'undecodable')
BOX_DROP_REASONS = ('image_skipped', 'unknown_category', 'crowd', 'non_finite', 'negative_size',
                    'zero_area', 'outside_image', 'over_max_instances')


def load_image(raw: Dict[str, tf.Tensor], image_is_path: bool) -> tf.data.Dataset:
  """One raw example -> a one-element dataset with `pixels` (uint8 RGB) and
  `image_status` (0 ok, else 1 + index into IMAGE_SKIP_REASONS).

  tf.data cannot catch a failing op inside a map, so decoding runs in its own
  one-element dataset with `ignore_errors()`, followed by the placeholder; the
  first element of the two is the answer. Grayscale, RGBA, palette and CMYK
  images come out as RGB; JPEG, PNG, GIF, BMP and WebP are understood.
  """
  raw = dict(raw)

  def decode(example):
    data = tf.io.read_file(example['image']) if image_is_path else example['image']
    example['pixels'] = tf.io.decode_image(data, channels=3, expand_animations=False)
    example['image_status'] = tf.constant(0, tf.int32)
    del example['image']
    return example

  failed = dict(raw)
  del failed['image']
  failed['pixels'] = tf.zeros([1, 1, 3], tf.uint8)
  failed['image_status'] = tf.where(raw['missing'], 1 + IMAGE_SKIP_REASONS.index('missing_file'),
                                    1 + IMAGE_SKIP_REASONS.index('undecodable'))
  decoded = tf.data.Dataset.from_tensors(raw).filter(lambda e: ~e['missing']).map(decode)
  return decoded.ignore_errors().concatenate(tf.data.Dataset.from_tensors(failed)).take(1)


def _first_true(conditions: tf.Tensor) -> tf.Tensor:
  """`[N, R]` bool -> `[N]` index of the first True, R where none is."""
  r = conditions.shape[-1]
  return tf.reduce_min(tf.where(conditions, tf.range(r), r), axis=-1)


def clean(example: Dict[str, tf.Tensor], class_table: tf.lookup.StaticHashTable,
          boxes_normalized: bool, skip_crowd: bool, max_instances: int) -> Dict[str, tf.Tensor]:
  """A loaded example -> boxes in pixels, inside the image, of known categories.

  Adds `classes` (model classes), `boxes_dropped` `[len(BOX_DROP_REASONS)]`,
  `boxes_clipped`, `images_skipped` `[len(IMAGE_SKIP_REASONS)]` and
  `image_valid`; keeps at most `max_instances` boxes (the first ones).
  """
  pixels = example['pixels']
  height = tf.cast(tf.shape(pixels)[0], tf.float32)
  width = tf.cast(tf.shape(pixels)[1], tf.float32)
  size = tf.stack([height, width, height, width])
  boxes = example['boxes'] * size if boxes_normalized else example['boxes']
  classes = class_table.lookup(example['category_ids'])
  valid_image = tf.equal(example['image_status'], 0)
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  clipped = tf.clip_by_value(boxes, 0.0, size)
  cy0, cx0, cy1, cx1 = tf.unstack(clipped, axis=-1)
  count = tf.shape(boxes)[0]
  reasons = tf.stack([
      tf.fill([count], ~valid_image),
      classes < 0,
      example['is_crowd'] & skip_crowd,
      ~tf.reduce_all(tf.math.is_finite(boxes), axis=-1),
      (ymax < ymin) | (xmax < xmin),
      (ymax == ymin) | (xmax == xmin),
      (cy1 <= cy0) | (cx1 <= cx0),
  ], axis=-1)
  reason = _first_true(reasons)
  kept = reason == reasons.shape[-1]
  over = kept & (tf.cumsum(tf.cast(kept, tf.int32)) > max_instances)
  reason = tf.where(over, len(BOX_DROP_REASONS) - 1, reason)
  kept = kept & ~over

  areas = tf.where(example['areas'] >= 0, example['areas'], (cy1 - cy0) * (cx1 - cx0))
  out = {k: v for k, v in example.items() if k not in ('boxes', 'category_ids', 'is_crowd', 'areas')}
  out.update(
      boxes=tf.boolean_mask(clipped, kept), classes=tf.boolean_mask(classes, kept),
      category_ids=tf.boolean_mask(example['category_ids'], kept),
      is_crowd=tf.boolean_mask(example['is_crowd'], kept), areas=tf.boolean_mask(areas, kept),
      boxes_dropped=tf.ensure_shape(tf.math.bincount(
          tf.boolean_mask(reason, ~kept), minlength=len(BOX_DROP_REASONS),
          maxlength=len(BOX_DROP_REASONS), dtype=tf.int32), [len(BOX_DROP_REASONS)]),
      boxes_clipped=tf.reduce_sum(tf.cast(kept & tf.reduce_any(clipped != boxes, axis=-1), tf.int32)),
      images_skipped=tf.one_hot(example['image_status'] - 1, len(IMAGE_SKIP_REASONS), dtype=tf.int32),
      image_valid=valid_image)
  return out
