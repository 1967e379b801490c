"""GridMask (Chen et al. 2020) as the official input pipeline applies it
(google/automl `aug/gridmask.py`, `data.grid_mask`), with stateless randomness.

A square grid of `gridblock`-pixel cells, random per image in
[min(h/2, 0.3w), max(h/2, 0.3w)]: of each cell a band of `ratio * gridblock`
rows and one of as many columns are kept, the rest of the cell (a square of
side ~0.4 gridblock at ratio 0.6) is set to 0. The grid, drawn over a square
(1 + size_ratio) times the image's longer side with random offsets, is rotated
and its centre cut to the image. Boxes do not move.

The official draws two of its numbers from normal distributions, and so does
this: the mask is applied when N(0, 1) < prob (probability 0.69 at its 0.5),
and rotated by `rotate` * N(-1, 1) degrees (N(-10, 10) at its 10). It rotates
its int32 mask bilinearly (tfa); here the grid is read at the nearest pixel.
"""
import math

import tensorflow as tf

# The official `gridmask()` defaults.
PROB = 0.5
RATIO = 0.6
ROTATE_DEGREES = 10.0
SIZE_RATIO = 0.5


def _bands(index: tf.Tensor, size: tf.Tensor, gridblock: tf.Tensor, length: tf.Tensor,
           start: tf.Tensor):
  """Whether row `index` of the `size`-row square is one the official loop fills:
  rows [gridblock * i + start, + length) for i < size // gridblock."""
  k = index - start
  return (k >= 0) & (k // gridblock < size // gridblock) & (k % gridblock < length)


def grid_mask(pixels: tf.Tensor, seed: tf.Tensor, prob: float = PROB, ratio: float = RATIO,
              rotate: float = ROTATE_DEGREES, size_ratio: float = SIZE_RATIO) -> tf.Tensor:
  """`pixels` `[h, w, 3]` with the grid's holes set to 0 (or unchanged, at random)."""
  seeds = tf.random.experimental.stateless_split(seed, 6)
  h = tf.shape(pixels)[0]
  w = tf.shape(pixels)[1]
  hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
  mask_size = tf.cast((size_ratio + 1) * tf.maximum(hf, wf), tf.int32)
  low = tf.cast(tf.minimum(hf * 0.5, wf * 0.3), tf.int32)
  high = tf.cast(tf.maximum(hf * 0.5, wf * 0.3), tf.int32) + 1
  gridblock = tf.random.stateless_uniform([], seeds[0], low, high, tf.int32)
  if ratio == 1:
    length = tf.random.stateless_uniform([], seeds[1], 1, gridblock + 1, tf.int32)
  else:
    length = tf.minimum(tf.maximum(
        tf.cast(tf.cast(gridblock, tf.float32) * ratio + 0.5, tf.int32), 1), gridblock - 1)
  row_start = tf.random.stateless_uniform([], seeds[2], 0, gridblock + 1, tf.int32)
  col_start = tf.random.stateless_uniform([], seeds[3], 0, gridblock + 1, tf.int32)
  degrees = rotate * tf.random.stateless_normal([], seeds[4], mean=-1.0, stddev=1.0)
  # Image pixel (y, x) is the rotated square's (y + top, x + left), which reads the
  # square at the inverse rotation about its centre (tfa.image.rotate's map). The
  # grid is evaluated there directly instead of warping the whole square, which
  # is (1.5 x the longer side)^2 pixels.
  top, left = (mask_size - h) // 2, (mask_size - w) // 2
  centre = (tf.cast(mask_size, tf.float32) - 1) / 2
  ys = tf.cast(tf.range(h) + top, tf.float32)[:, None] - centre
  xs = tf.cast(tf.range(w) + left, tf.float32)[None, :] - centre
  angle = degrees * math.pi / 180
  cos, sin = tf.cos(angle), tf.sin(angle)
  src_x = tf.cast(tf.round(cos * xs - sin * ys + centre), tf.int32)
  src_y = tf.cast(tf.round(sin * xs + cos * ys + centre), tf.int32)
  inside = (src_x >= 0) & (src_x < mask_size) & (src_y >= 0) & (src_y < mask_size)
  kept = inside & (_bands(src_y, mask_size, gridblock, length, row_start)
                   | _bands(src_x, mask_size, gridblock, length, col_start))
  mask = tf.cast(kept[..., None], pixels.dtype)
  occur = tf.random.stateless_normal([], seeds[5]) < prob
  return tf.cond(occur, lambda: pixels * mask, lambda: pixels)
