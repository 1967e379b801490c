"""Mosaic: four training images in one, as google/automl `aug/mosaic.py` builds it.

The official operation: a point is drawn in the middle half of each side of
the output (a whole pixel in [25%, 75%) of it), and the four images are
resized, without keeping their aspect ratios, into the four rectangles around
it: the first above-left, the second below it, the third to its right, the
fourth below-right; their boxes are scaled and shifted with them.

The official class is not wired into its own input pipeline; here
`data.mosaic=True` makes one mosaic per example of the training stream, from
that example and the three after it (`windows`): every example is still the
first of exactly one mosaic and brings its bad-data counts once, and a resumed
run, which skips to its position before anything is decoded, sees the mosaics
an uninterrupted one sees. The partners are the next examples of this host's
stream, so with mosaic the batches depend on the number of hosts. The mosaic
is made at the model's input size and then goes through the usual
augmentation (GridMask, AutoAugment, flip, scale jitter, crop).
"""
from typing import Dict, Tuple

import tensorflow as tf

from effdet_jax.data import sanitize

NUM_IMAGES = 4
MIN_PERCENT = 25    # the official `_minimum_mosaic_image_dim`
# What a window carries of each example: the pixels and boxes it contributes,
# and (from the first) what the mosaic passes on.
KEYS = ('pixels', 'boxes', 'classes', 'image_valid', 'image_id', 'images_skipped',
        'boxes_dropped', 'boxes_clipped', 'seed')


def divide_point(output_size: Tuple[int, int], seed: tf.Tensor) -> tf.Tensor:
  """`[2]` int32 (row, column): uniform whole pixels in [25%, 75%) of each side,
  with the official bounds (`int(side * 0.25)` to `int(side * 0.75)`, exclusive)."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  return tf.stack([tf.random.stateless_uniform(
      [], seeds[i], minval=int(side * MIN_PERCENT / 100), maxval=int(side * (100 - MIN_PERCENT) / 100),
      dtype=tf.int32) for i, side in enumerate(output_size)])


def rectangles(point: tf.Tensor, output_size: Tuple[int, int]) -> tf.Tensor:
  """`[4, 4]` (top, left, height, width) of the four images around `point`."""
  r, c = point[0], point[1]
  h, w = output_size
  return tf.stack([tf.stack([0, 0, r, c]), tf.stack([r, 0, h - r, c]),
                   tf.stack([0, c, r, w - c]), tf.stack([r, c, h - r, w - c])])


def combine(pixels, sizes, boxes, counts, classes, point: tf.Tensor,
            output_size: Tuple[int, int]):
  """Four images (`pixels` `[4, H, W, 3]` uint8, padded; `sizes` `[4, 2]` their
  own heights and widths) and their pixel boxes (`boxes` `[4, M, 4]`, `counts`
  `[4]`, `classes` `[4, M]`) -> the mosaic `[*output_size, 3]` uint8 and its
  boxes and classes (the first image's first).

  Resized bilinearly as the official (`tf.image.resize`), then rounded back to
  uint8 for the pixel augmentations that follow.
  """
  rects = rectangles(point, output_size)
  parts, all_boxes, all_classes = [], [], []
  for k in range(NUM_IMAGES):
    top, left, height, width = tf.unstack(rects[k])
    image = pixels[k, :sizes[k, 0], :sizes[k, 1]]
    parts.append(tf.image.resize(image, tf.stack([height, width])))
    scale = tf.cast(tf.stack([height, width]), tf.float32) / tf.cast(sizes[k], tf.float32)
    offset = tf.cast(tf.stack([top, left]), tf.float32)
    all_boxes.append(boxes[k, :counts[k]] * tf.tile(scale, [2]) + tf.tile(offset, [2]))
    all_classes.append(classes[k, :counts[k]])
  image = tf.concat([tf.concat(parts[:2], axis=0), tf.concat(parts[2:], axis=0)], axis=1)
  image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
  return (tf.ensure_shape(image, [*output_size, 3]), tf.concat(all_boxes, axis=0),
          tf.concat(all_classes, axis=0))


def windows(examples: tf.data.Dataset) -> tf.data.Dataset:
  """Cleaned examples -> groups of four consecutive ones (`[4, ...]`, padded),
  one group starting at every example."""
  def prepare(example):
    out = {k: example[k] for k in KEYS}
    out['size'] = tf.shape(example['pixels'])[:2]
    out['count'] = tf.shape(example['boxes'])[0]
    return out

  def group(window):
    zipped = tf.data.Dataset.zip(window)
    padding = {k: tf.constant(-1, spec.dtype) if k == 'classes' else tf.zeros([], spec.dtype)
               for k, spec in zipped.element_spec.items()}
    return zipped.padded_batch(NUM_IMAGES, padding_values=padding)

  return examples.map(prepare).window(NUM_IMAGES, shift=1, drop_remainder=True).flat_map(group)


def mosaic(group: Dict[str, tf.Tensor], output_size: Tuple[int, int],
           max_instances: int) -> Dict[str, tf.Tensor]:
  """A group from `windows` -> one example: the mosaic's pixels and boxes, the
  first example's id, validity, seed and bad-data counts. Boxes past
  `max_instances` (four images bring up to four times as many) are dropped
  and counted under `over_max_instances`."""
  seed = group['seed'][0]
  point = divide_point(output_size, tf.random.experimental.stateless_fold_in(seed, 3))
  pixels, boxes, classes = combine(group['pixels'], group['size'], group['boxes'],
                                   group['count'], group['classes'], point, output_size)
  over = tf.maximum(tf.shape(boxes)[0] - max_instances, 0)
  dropped = group['boxes_dropped'][0] + over * tf.one_hot(
      sanitize.BOX_DROP_REASONS.index('over_max_instances'), len(sanitize.BOX_DROP_REASONS),
      dtype=tf.int32)
  return {'pixels': pixels, 'boxes': boxes[:max_instances], 'classes': classes[:max_instances],
          'image_valid': group['image_valid'][0], 'image_id': group['image_id'][0],
          'images_skipped': group['images_skipped'][0], 'boxes_dropped': dropped,
          'boxes_clipped': group['boxes_clipped'][0], 'seed': seed}
