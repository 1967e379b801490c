"""The image operations of the official AutoAugment and RandAugment for detection
(google/automl `aug/autoaugment.py`), on uint8 `[h, w, 3]` images and `[N, 4]`
boxes in pixels (`[ymin, xmin, ymax, xmax]`, pixel i spanning [i, i + 1)).

Geometric operations warp the image nearest-neighbour (the official's tfa
defaults), fill what comes from outside with the official grey 128, and move
each box to the enclosing box of its mapped corners, clipped to the image.
Where the official rounds corners to whole pixels and turns a box pushed out of
the image into a sliver 5% of the image wide at its border (`_check_bbox_area`),
here corners stay fractional and such a box ends with zero area (the pipeline
drops it). `*_inside_boxes` apply an operation to the pixels inside each box.
"""
import math

import tensorflow as tf

REPLACE = 128


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


def brightness(image: tf.Tensor, factor: float) -> tf.Tensor:
  return _blend(tf.zeros_like(image), image, factor)


def contrast(image: tf.Tensor, factor: float) -> tf.Tensor:
  """Blend with the mean grey level (of the whole-level grey image, as the official)."""
  grey = tf.cast(tf.cast(tf.image.rgb_to_grayscale(image), tf.int32), tf.float32)
  mean = tf.cast(tf.clip_by_value(tf.reduce_mean(grey), 0.0, 255.0), tf.uint8)
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def posterize(image: tf.Tensor, bits: int) -> tf.Tensor:
  shift = 8 - bits
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """PIL's: each channel stretched to 0..255 (a flat channel unchanged)."""
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=[0, 1])
  hi = tf.reduce_max(x, axis=[0, 1])
  scale = 255.0 / tf.maximum(hi - lo, 1e-12)
  stretched = tf.cast(tf.clip_by_value((x - lo) * scale, 0.0, 255.0), tf.uint8)
  return tf.where(hi > lo, stretched, image)


def sharpness(image: tf.Tensor, factor: float) -> tf.Tensor:
  """PIL's: blend with the image smoothed by [[1,1,1],[1,5,1],[1,1,1]]/13 (border
  pixels kept)."""
  kernel = tf.tile(tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32,
                               shape=[3, 3, 1, 1]) / 13.0, [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1],
                                  'VALID')[0]
  smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  border = tf.pad(tf.zeros([h - 2, w - 2], tf.bool), [[1, 1], [1, 1]], constant_values=True)
  degenerate = tf.where(border[..., None], image, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]))
  return _blend(degenerate, image, factor)


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

def warp(image: tf.Tensor, inverse: tf.Tensor, replace: int = REPLACE) -> tf.Tensor:
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
  return warp(image, inverse), _move_boxes(boxes, inverse, tf.shape(image)[:2])


def translate_inverse(pixels, horizontal: bool) -> tf.Tensor:
  """Content moves by -pixels (left or up for pixels > 0), as the official."""
  zero, one = tf.constant(0.0), tf.constant(1.0)
  pixels = tf.cast(pixels, tf.float32)
  return (tf.stack([one, zero, pixels, zero, one, zero]) if horizontal
          else tf.stack([one, zero, zero, zero, one, pixels]))


def shear_inverse(level, horizontal: bool) -> tf.Tensor:
  """Output (x, y) reads (x + level y, y) (or (x, y + level x)), as the official."""
  zero, one = tf.constant(0.0), tf.constant(1.0)
  level = tf.cast(level, tf.float32)
  return (tf.stack([one, level, zero, zero, one, zero]) if horizontal
          else tf.stack([one, zero, zero, level, one, zero]))


def rotate_inverse(degrees, image_hw) -> tf.Tensor:
  """About the image centre, as `tfa.image.rotate(image, radians)` (counter-clockwise
  on the screen for degrees > 0)."""
  h, w = tf.cast(image_hw[0], tf.float32), tf.cast(image_hw[1], tf.float32)
  angle = tf.cast(degrees, tf.float32) * math.pi / 180
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  return tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy])


def translate(image, boxes, pixels, horizontal: bool):
  return _geometric(image, boxes, translate_inverse(pixels, horizontal))


def shear(image, boxes, level, horizontal: bool):
  return _geometric(image, boxes, shear_inverse(level, horizontal))


def rotate(image, boxes, degrees):
  return _geometric(image, boxes, rotate_inverse(degrees, tf.shape(image)[:2]))


def _box_pixels(box, image_hw):
  """The official's integer extent of a box: rows int(ymin) .. min(int(ymax), h - 1)."""
  h, w = image_hw[0], image_hw[1]
  corners = tf.cast(box, tf.int32)
  return (corners[0], corners[1], tf.minimum(corners[2], h - 1), tf.minimum(corners[3], w - 1))


def box_cutout(image, boxes, pad_fraction: float, seed, replace: int = REPLACE):
  """Cutout inside one box picked at random: a rectangle of pad_fraction times the
  box's height and width, centred uniformly in the box, set to `replace`."""
  def cut():
    seeds = tf.random.experimental.stateless_split(seed, 3)
    pick = tf.random.stateless_uniform([], seeds[0], 0, tf.shape(boxes)[0], tf.int32)
    y0, x0, y1, x1 = _box_pixels(boxes[pick], tf.shape(image))
    pad_h = tf.cast(pad_fraction * tf.cast(y1 - y0 + 1, tf.float32) / 2, tf.int32)
    pad_w = tf.cast(pad_fraction * tf.cast(x1 - x0 + 1, tf.float32) / 2, tf.int32)
    cy = tf.random.stateless_uniform([], seeds[1], y0, tf.maximum(y1 + 1, y0 + 1), tf.int32)
    cx = tf.random.stateless_uniform([], seeds[2], x0, tf.maximum(x1 + 1, x0 + 1), tf.int32)
    rows, cols = tf.range(tf.shape(image)[0]), tf.range(tf.shape(image)[1])
    inside = (((rows >= cy - pad_h) & (rows < cy + pad_h))[:, None]
              & ((cols >= cx - pad_w) & (cols < cx + pad_w))[None, :])
    return tf.where(inside[..., None], tf.cast(replace, image.dtype), image)
  return tf.cond(tf.shape(boxes)[0] > 0, cut, lambda: image), boxes


def inside_boxes(image, boxes, prob, fn, seed):
  """`fn(pixels, seed)` applied to the pixels of each box with probability `prob`,
  one box after another in a random order (as the official; boxes do not move)."""
  n = tf.shape(boxes)[0]
  seeds = tf.random.experimental.stateless_split(seed, 2)
  order = tf.argsort(tf.random.stateless_uniform([n], seeds[0]))

  def body(i, image):
    box_seed = tf.random.experimental.stateless_fold_in(seeds[1], i)
    draw = tf.random.experimental.stateless_split(box_seed, 2)
    y0, x0, y1, x1 = _box_pixels(boxes[order[i]], tf.shape(image))

    def apply():
      h, w = tf.shape(image)[0], tf.shape(image)[1]
      changed = fn(image[y0:y1 + 1, x0:x1 + 1], draw[1])
      padding = [[y0, h - 1 - y1], [x0, w - 1 - x1], [0, 0]]
      inside = tf.pad(tf.ones_like(changed, tf.bool), padding)
      return tf.where(inside, tf.pad(changed, padding), image)
    use = (tf.random.stateless_uniform([], draw[0]) < prob) & (y1 >= y0) & (x1 >= x0)
    return i + 1, tf.cond(use, apply, lambda: image)

  _, image = tf.while_loop(lambda i, _: i < n, body, [tf.constant(0), image])
  return image, boxes
