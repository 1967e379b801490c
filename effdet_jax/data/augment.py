"""Training augmentation and evaluation resizing, as the official input pipeline.

Training: optionally GridMask (gridmask.py) and AutoAugment or RandAugment
(autoaugment.py) on the pixels, then normalize, random horizontal flip, scale
jitter (the image is resized so that it fits `random_scale * model_size`,
random scale in [jitter_min, jitter_max]), a random crop of the model size where the resized
image is larger, zero padding (the mean colour after normalization) where it is
smaller. Boxes follow the same transform, are clipped to the crop and dropped
when nothing of them is left. Randomness is stateless, from a per-example seed,
so the output does not depend on thread scheduling.
"""
from typing import Sequence, Tuple

import tensorflow as tf

from effdet_jax.data import autoaugment, gridmask


def normalize(pixels: tf.Tensor, mean_rgb: Sequence[float], stddev_rgb: Sequence[float],
              dtype: tf.DType = tf.float32) -> tf.Tensor:
  """`(pixels - mean) / stddev` in `dtype` (float32, or float64 for a float64 run)
  with the official float32 constants."""
  image = tf.cast(pixels, dtype)
  mean = tf.cast(tf.constant(mean_rgb, tf.float32), dtype)
  return (image - mean) / tf.cast(tf.constant(stddev_rgb, tf.float32), dtype)


def flip_left_right(image: tf.Tensor, boxes: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  width = tf.cast(tf.shape(image)[1], boxes.dtype)
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  return image[:, ::-1], tf.stack([ymin, width - xmax, ymax, width - xmin], axis=-1)


def _resize_crop_pad(image, scaled_hw, offset, output_size):
  # At scale 1 the bilinear resize is the identity: skipped, which keeps a float64
  # image float64 (tf.image.resize computes in float32).
  unchanged = tf.reduce_all(tf.equal(tf.shape(image)[:2], scaled_hw))
  resized = tf.cond(unchanged, lambda: image,
                    lambda: tf.cast(tf.image.resize(image, scaled_hw, method='bilinear'),
                                    image.dtype))
  cropped = resized[offset[0]:offset[0] + output_size[0], offset[1]:offset[1] + output_size[1]]
  return tf.image.pad_to_bounding_box(cropped, 0, 0, output_size[0], output_size[1])


def _transform_boxes(boxes, image_hw, scaled_hw, offset, output_size):
  """Boxes in original pixels -> output pixels, as the official: scaled by the
  rounded resize, shifted by the crop, clipped to [0, size - 1]."""
  image_hw = tf.cast(image_hw, tf.float32)
  scale = tf.cast(scaled_hw, tf.float32) / image_hw
  boxes = boxes * tf.tile(scale, [2]) - tf.cast(tf.tile(offset, [2]), tf.float32)
  limit = tf.constant([output_size[0] - 1, output_size[1] - 1] * 2, tf.float32)
  return tf.clip_by_value(boxes, 0.0, limit)


def random_scale(image_hw: tf.Tensor, output_size: Tuple[int, int], jitter_min: float,
                 jitter_max: float, seeds: tf.Tensor):
  """The official scale jitter: (scaled size, crop offset), both int32 `[2]`."""
  factor = tf.random.stateless_uniform([], seeds[0], jitter_min, jitter_max)
  target = tf.cast(factor * tf.constant(output_size, tf.float32), tf.int32)
  hw = tf.cast(image_hw, tf.float32)
  image_scale = tf.reduce_min(tf.cast(target, tf.float32) / hw)
  scaled_hw = tf.cast(hw * image_scale, tf.int32)
  room = tf.maximum(0.0, tf.cast(scaled_hw - tf.constant(output_size), tf.float32))
  offset = tf.cast(room * tf.random.stateless_uniform([2], seeds[1]), tf.int32)
  return scaled_hw, offset


def train_transform(pixels: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor,
                    output_size: Tuple[int, int], seed: tf.Tensor, hflip: bool,
                    jitter_min: float, jitter_max: float, mean_rgb, stddev_rgb,
                    dtype: tf.DType = tf.float32, grid_mask: bool = False,
                    autoaugment_policy: str = ''):
  """uint8 image + pixel boxes -> model input `[H, W, 3]` of `dtype`, boxes, classes
  (boxes with nothing left inside the crop removed)."""
  # Each on its own stream: the flip and jitter draw what they draw without them.
  if grid_mask:
    pixels = gridmask.grid_mask(pixels, tf.random.experimental.stateless_fold_in(seed, 1))
  if autoaugment.check_policy(autoaugment_policy):
    pixels, boxes = autoaugment.augment(pixels, boxes,
                                        tf.random.experimental.stateless_fold_in(seed, 2),
                                        autoaugment_policy)
  seeds = tf.random.experimental.stateless_split(seed, 3)
  image = normalize(pixels, mean_rgb, stddev_rgb, dtype)
  if hflip:
    image, boxes = tf.cond(tf.random.stateless_uniform([], seeds[0]) < 0.5,
                           lambda: flip_left_right(image, boxes), lambda: (image, boxes))
  image_hw = tf.shape(image)[:2]
  scaled_hw, offset = random_scale(image_hw, output_size, jitter_min, jitter_max, seeds[1:])
  image = _resize_crop_pad(image, scaled_hw, offset, output_size)
  boxes = _transform_boxes(boxes, image_hw, scaled_hw, offset, output_size)
  keep = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) != 0
  return image, tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep)


def eval_transform(pixels: tf.Tensor, output_size: Tuple[int, int], mean_rgb, stddev_rgb):
  """Aspect-preserving resize to fit the model input, zero padding; returns the
  image and the original pixels per input pixel (multiply detections by it)."""
  image = normalize(pixels, mean_rgb, stddev_rgb)
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  image_scale = tf.reduce_min(tf.constant(output_size, tf.float32) / hw)
  scaled_hw = tf.cast(hw * image_scale, tf.int32)
  image = _resize_crop_pad(image, scaled_hw, tf.zeros([2], tf.int32), output_size)
  return image, 1.0 / image_scale


def pad_to(values: tf.Tensor, length: int, value) -> tf.Tensor:
  """Pad (or cut) the first axis to `length`."""
  values = values[:length]
  pad = length - tf.shape(values)[0]
  paddings = [[0, pad]] + [[0, 0]] * (len(values.shape) - 1)
  out = tf.pad(values, paddings, constant_values=tf.cast(value, values.dtype))
  return tf.ensure_shape(out, [length] + values.shape[1:].as_list())
