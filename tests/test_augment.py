"""Augmentation moves boxes exactly with the pixels they cover."""
import numpy as np
import pytest
import tensorflow as tf

from effdet_jax.data import augment

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
OUT = (96, 128)


def _picture(height, width, box):
  """Grey image with one red rectangle exactly covering `box` (pixels, half-open)."""
  image = np.full((height, width, 3), 128, np.uint8)
  y0, x0, y1, x1 = box
  image[y0:y1, x0:x1] = (255, 0, 0)
  return image


def _red_extent(image):
  """`[ymin, xmin, ymax, xmax]` of the pixels that are more than half red, or None."""
  rgb = image * np.float32(STD) + np.float32(MEAN)
  red = (rgb[..., 0] - rgb[..., 1]) > 64
  if not red.any():
    return None
  ys, xs = np.nonzero(red)
  return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


@pytest.mark.parametrize('seed', range(24))
def test_box_follows_its_pixels_through_flip_scale_and_crop(seed):
  box = (30, 50, 70, 110)
  image = _picture(120, 160, box)
  out, boxes, classes = augment.train_transform(
      tf.constant(image), tf.constant([box], tf.float32), tf.constant([3]), OUT,
      tf.constant([seed, 7], tf.int64), hflip=True, jitter_min=0.3, jitter_max=2.0,
      mean_rgb=MEAN, stddev_rgb=STD)
  out = out.numpy()
  assert out.shape == (*OUT, 3)
  extent = _red_extent(out)
  if boxes.shape[0] == 0:
    # The crop missed the box: no red pixel may be left either.
    assert extent is None
    return
  assert classes.numpy().tolist() == [3]
  # The red region is the box up to the resampling blur and the official clip at size - 1.
  np.testing.assert_allclose(boxes.numpy()[0], extent, atol=1.5)


def test_flips_and_scales_happen_and_are_seeded():
  image = tf.constant(_picture(120, 160, (30, 20, 70, 60)))
  box = tf.constant([[30, 20, 70, 60]], tf.float32)

  def run(seed):
    return augment.train_transform(image, box, tf.constant([0]), OUT, tf.constant([seed, 0], tf.int64),
                                   True, 0.5, 1.5, MEAN, STD)[1].numpy()

  results = [run(s) for s in range(16)]
  widths = {round(float(b[0, 3] - b[0, 1])) for b in results if len(b)}
  assert len(widths) > 4                                             # scale varies
  assert any(b[0, 1] > 48 for b in results if len(b))               # flipped: box moved right
  np.testing.assert_array_equal(run(5), run(5))                      # same seed, same result


def test_padding_is_zero_after_normalization_and_eval_scale():
  image = _picture(60, 160, (10, 10, 20, 20))
  out, scale = augment.eval_transform(tf.constant(image), OUT, MEAN, STD)
  out = out.numpy()
  # 160 wide -> 128: scale 0.8, 60 rows -> 48 rows, the rest is padding.
  assert float(scale) == pytest.approx(1 / 0.8)
  np.testing.assert_array_equal(out[48:], 0.0)
  np.testing.assert_allclose(_red_extent(out), [8, 8, 16, 16], atol=1)


def test_pad_to_cuts_and_pads():
  values = tf.constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
  assert augment.pad_to(values, 2, 0).numpy().tolist() == [[1, 2], [3, 4]]
  assert augment.pad_to(values, 4, -1).numpy().tolist()[-1] == [-1, -1]


@pytest.mark.parametrize('dtype', [tf.float32, tf.float64])
def test_scale_one_is_exactly_the_normalized_image_in_its_dtype(dtype):
  """No jitter at the model size: the pixels as normalized, no resampling (in
  float64 too, which tf.image.resize would round to float32)."""
  pixels = np.random.default_rng(0).integers(0, 256, (*OUT, 3), np.uint8)
  boxes = tf.constant([[10.0, 20.0, 50.0, 60.0]])
  image, out_boxes, _ = augment.train_transform(
      pixels, boxes, tf.constant([1]), OUT, tf.constant([1, 2], tf.int64), False, 1.0, 1.0,
      MEAN, STD, dtype)
  assert image.dtype == dtype
  want = (pixels.astype(np.float64) - np.float32(MEAN).astype(np.float64)) / \
      np.float32(STD).astype(np.float64)
  if dtype == tf.float32:
    want = (pixels.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
  np.testing.assert_array_equal(image.numpy(), want)
  np.testing.assert_array_equal(out_boxes.numpy(), boxes.numpy())
