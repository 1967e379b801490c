"""RandAugment for detection as the official input pipeline applies it
(`data.autoaugment_policy='randaug'`: google/automl `aug/autoaugment.py`,
`distort_image_with_randaugment(image, boxes, num_layers=1, magnitude=15)`),
with stateless randomness and boxes in pixels.

Each layer picks one of ten operations uniformly and applies it (the official
draws a probability per operation and does not use it). At magnitude 15 of the
official scale's 10: rotate by 45 degrees, shear by 0.45, translate by 375
pixels (each sign at random), color factor 2.8, cutout of a 300-pixel square,
solarize-add 165 below 128, and solarize at threshold 384, which changes no
uint8 pixel (as in the official). Emptied pixels take the official grey 128.
The image transforms are nearest-neighbour, as the official's (tfa defaults).

Boxes move with the pixels: the geometric operations map each box's corners
and take their enclosing box, clipped to the image. Where the official rounds
corners to whole pixels and turns a box pushed out of the image into a sliver
5% of the image wide at its border (`_check_bbox_area`), here corners stay
fractional and such a box ends with zero area, so the pipeline drops it.

The official AutoAugment policies (`v0`-`v3`) are not implemented.
"""
import math
from typing import Tuple

import tensorflow as tf

POLICIES = ('', 'randaug')
MAX_LEVEL = 10.0
MAGNITUDE = 15.0
NUM_LAYERS = 1
REPLACE = 128
CUTOUT_CONST = 100
TRANSLATE_CONST = 250
OPS = ('Equalize', 'Solarize', 'Color', 'Cutout', 'SolarizeAdd', 'TranslateX_BBox',
       'TranslateY_BBox', 'ShearX_BBox', 'ShearY_BBox', 'Rotate_BBox')


def check_policy(policy: str) -> str:
  if policy not in POLICIES:
    raise ValueError(f'config.data.autoaugment_policy must be one of {POLICIES}, got {policy!r} '
                     f'(the official AutoAugment policies v0-v3 are not implemented)')
  return policy


# Colour operations on uint8 `[h, w, 3]`.

def _blend(base: tf.Tensor, image: tf.Tensor, factor: float) -> tf.Tensor:
  """base + factor * (image - base), clipped to uint8 (factor > 1 extrapolates)."""
  base, image = tf.cast(base, tf.float32), tf.cast(image, tf.float32)
  return tf.cast(tf.clip_by_value(base + factor * (image - base), 0.0, 255.0), tf.uint8)


def color(image: tf.Tensor, factor: float) -> tf.Tensor:
  return _blend(tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image)), image, factor)


def solarize(image: tf.Tensor, threshold: int) -> tf.Tensor:
  return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)


def solarize_add(image: tf.Tensor, addition: int, threshold: int = 128) -> tf.Tensor:
  added = tf.cast(tf.clip_by_value(tf.cast(image, tf.int32) + addition, 0, 255), tf.uint8)
  return tf.where(image < threshold, added, image)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """PIL's per-channel histogram equalization, as the official writes it (the
  three channels' histograms and tables side by side, in one pass each)."""
  values = tf.cast(image, tf.int32) + tf.constant([0, 256, 512])
  histogram = tf.reshape(tf.math.bincount(values, minlength=768, maxlength=768), [3, 256])
  # The last used level's count, per channel.
  last = tf.reduce_max(tf.where(histogram > 0, tf.range(256), -1), axis=1)
  step = (tf.reduce_sum(histogram, 1) - tf.gather(histogram, last, batch_dims=1)) // 255
  lut = (tf.cumsum(histogram, axis=1) + step[:, None] // 2) // tf.maximum(step, 1)[:, None]
  lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], tf.int32), lut[:, :-1]], 1), 0, 255)
  lut = tf.where(step[:, None] == 0, tf.range(256)[None], lut)   # one level: unchanged
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), values), tf.uint8)


def cutout(image: tf.Tensor, pad_size: int, seed: tf.Tensor, replace: int = REPLACE) -> tf.Tensor:
  """A (2 pad_size)-pixel square, centred uniformly in the image, set to `replace`."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  seeds = tf.random.experimental.stateless_split(seed, 2)
  cy = tf.random.stateless_uniform([], seeds[0], 0, h, tf.int32)
  cx = tf.random.stateless_uniform([], seeds[1], 0, w, tf.int32)
  rows, cols = tf.range(h), tf.range(w)
  inside = (((rows >= cy - pad_size) & (rows < cy + pad_size))[:, None]
            & ((cols >= cx - pad_size) & (cols < cx + pad_size))[None, :])
  return tf.where(inside[..., None], tf.cast(replace, image.dtype), image)


# Geometric operations: the image through an inverse map (output pixel index ->
# input pixel index), the boxes' corners through the forward one.

def _warp(image: tf.Tensor, inverse: tf.Tensor, replace: int = REPLACE) -> tf.Tensor:
  """Nearest-neighbour warp of the uint8 image; pixels from outside it are
  `replace`. `inverse` is [a0, a1, a2, b0, b1, b2]: output (x, y) reads
  (a0 x + a1 y + a2, b0 x + b1 y + b2), TF's projective-transform convention."""
  transform = tf.concat([tf.cast(inverse, tf.float32), [0.0, 0.0]], 0)
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2],
      fill_value=float(replace), interpolation='NEAREST', fill_mode='CONSTANT')[0]


def _move_boxes(boxes: tf.Tensor, inverse: tf.Tensor, image_hw) -> tf.Tensor:
  """Boxes (continuous pixel coordinates: pixel i spans [i, i + 1)) -> the
  enclosing boxes of their mapped corners, clipped to the image."""
  a0, a1, a2, b0, b1, b2 = tf.unstack(tf.cast(inverse, tf.float32))
  # Pixel indices are continuous coordinates - 0.5; invert the 2x2 map.
  det = a0 * b1 - a1 * b0
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  corners_x = tf.stack([xmin, xmax, xmin, xmax], -1) - 0.5
  corners_y = tf.stack([ymin, ymin, ymax, ymax], -1) - 0.5
  dx, dy = corners_x - a2, corners_y - b2
  out_x = (b1 * dx - a1 * dy) / det + 0.5
  out_y = (-b0 * dx + a0 * dy) / det + 0.5
  h, w = tf.cast(image_hw[0], tf.float32), tf.cast(image_hw[1], tf.float32)
  moved = tf.stack([tf.reduce_min(out_y, -1), tf.reduce_min(out_x, -1),
                    tf.reduce_max(out_y, -1), tf.reduce_max(out_x, -1)], -1)
  return tf.clip_by_value(moved, 0.0, tf.stack([h, w, h, w]))


def _geometric(image, boxes, inverse):
  return _warp(image, inverse), _move_boxes(boxes, inverse, tf.shape(image)[:2])


def translate(image, boxes, pixels, horizontal: bool):
  """Content moves by -pixels (left or up for pixels > 0), as the official."""
  zero, one = tf.constant(0.0), tf.constant(1.0)
  pixels = tf.cast(pixels, tf.float32)
  inverse = (tf.stack([one, zero, pixels, zero, one, zero]) if horizontal
             else tf.stack([one, zero, zero, zero, one, pixels]))
  return _geometric(image, boxes, inverse)


def shear(image, boxes, level, horizontal: bool):
  """Output (x, y) reads (x + level y, y) (or (x, y + level x)), as the official."""
  zero, one = tf.constant(0.0), tf.constant(1.0)
  level = tf.cast(level, tf.float32)
  inverse = (tf.stack([one, level, zero, zero, one, zero]) if horizontal
             else tf.stack([one, zero, zero, level, one, zero]))
  return _geometric(image, boxes, inverse)


def rotate(image, boxes, degrees):
  """About the image centre, as `tfa.image.rotate(image, radians)` (counter-clockwise
  on the screen for degrees > 0)."""
  h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
  angle = tf.cast(degrees, tf.float32) * math.pi / 180
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  inverse = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy])
  return _geometric(image, boxes, inverse)


def _signed(value: float, seed: tf.Tensor) -> tf.Tensor:
  """`value` or `-value`, each with probability 1/2 (the official `_randomly_negate_tensor`)."""
  return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -value, value)


def _apply(index: int, image, boxes, magnitude: float, seed) -> Tuple[tf.Tensor, tf.Tensor]:
  """Operation `OPS[index]` at `magnitude`, with the official level-to-argument rules."""
  level = magnitude / MAX_LEVEL
  name = OPS[index]
  if name == 'Equalize':
    return equalize(image), boxes
  if name == 'Solarize':
    return solarize(image, int(level * 256)), boxes
  if name == 'Color':
    return color(image, level * 1.8 + 0.1), boxes
  if name == 'Cutout':
    return cutout(image, int(level * CUTOUT_CONST), seed), boxes
  if name == 'SolarizeAdd':
    return solarize_add(image, int(level * 110)), boxes
  if name in ('TranslateX_BBox', 'TranslateY_BBox'):
    return translate(image, boxes, _signed(level * TRANSLATE_CONST, seed),
                     horizontal=name == 'TranslateX_BBox')
  if name in ('ShearX_BBox', 'ShearY_BBox'):
    return shear(image, boxes, _signed(level * 0.3, seed), horizontal=name == 'ShearX_BBox')
  return rotate(image, boxes, _signed(level * 30.0, seed))


def randaugment(pixels: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor,
                num_layers: int = NUM_LAYERS,
                magnitude: float = MAGNITUDE) -> Tuple[tf.Tensor, tf.Tensor]:
  """uint8 `[h, w, 3]` and `[N, 4]` pixel boxes, each layer one random operation."""
  for layer in range(num_layers):
    seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, layer), 2)
    pick = tf.random.stateless_uniform([], seeds[0], 0, len(OPS), tf.int32)
    branches = [lambda i=i: _apply(i, pixels, boxes, magnitude, seeds[1])
                for i in range(len(OPS))]
    pixels, boxes = tf.switch_case(pick, branches)
  return pixels, boxes
