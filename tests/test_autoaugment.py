"""AutoAugment and RandAugment: every operation at the official magnitudes, boxes
following their pixels, the policies seeded and resumable in the training stream."""
import copy

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps
from skimage import data

from data_helpers import train_batches
from effdet_jax.data import autoaugment, image_ops, input_pipeline
from test_input_pipeline import config  # noqa: F401  (the module's dataset fixture)

H, W = 240, 320
BOX = (60, 100, 140, 180)   # ymin, xmin, ymax, xmax (pixel i spans [i, i + 1))


def _picture():
  image = np.full((H, W, 3), 90, np.uint8)
  image[BOX[0]:BOX[2], BOX[1]:BOX[3]] = (250, 10, 10)
  return image


def _red_extent(image):
  red = (image[..., 0].astype(int) - image[..., 1]) > 100
  if not red.any():
    return None
  ys, xs = np.nonzero(red)
  return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)


def _moved(op, *args):
  image, boxes = op(tf.constant(_picture()), tf.constant([BOX], tf.float32), *args)
  return image.numpy(), boxes.numpy()[0]


@pytest.mark.parametrize('pixels', [-375.0, -100.0, 0.0, 37.0, 375.0])
@pytest.mark.parametrize('horizontal', [True, False])
def test_translation_moves_box_and_pixels_alike(pixels, horizontal):
  image, box = _moved(image_ops.translate, pixels, horizontal)
  extent = _red_extent(image)
  if extent is None:                       # pushed out of the image: an empty box
    assert (box[2] - box[0]) * (box[3] - box[1]) == 0
  else:
    np.testing.assert_allclose(box, extent, atol=1e-4)
  if abs(pixels) > 0:   # what came in from outside is the official grey
    assert (image == image_ops.REPLACE).all(axis=-1).any()


@pytest.mark.parametrize('level', [-0.45, -0.2, 0.2, 0.45])
@pytest.mark.parametrize('horizontal', [True, False])
def test_shear_moves_box_and_pixels_alike(level, horizontal):
  image, box = _moved(image_ops.shear, level, horizontal)
  np.testing.assert_allclose(box, _red_extent(image), atol=1.0)


@pytest.mark.parametrize('degrees', [-45.0, -10.0, 30.0, 45.0, 90.0])
def test_rotation_moves_box_and_pixels_alike(degrees):
  image, box = _moved(image_ops.rotate, degrees)
  # Nearest-neighbour sampling: the enclosing box of the rotated corners is the
  # extent of the rotated pixels to within a pixel.
  np.testing.assert_allclose(box, _red_extent(image), atol=1.5)


def test_rotation_keeps_what_stays_inside_and_boxes_are_clipped():
  boxes = tf.constant([[0.0, 0.0, 40.0, W]], tf.float32)   # a strip along the top
  image, moved = image_ops.rotate(tf.constant(_picture()), boxes, 45.0)
  moved = moved.numpy()[0]
  assert (moved >= 0).all() and moved[2] <= H and moved[3] <= W


def test_colour_operations_at_the_official_magnitudes():
  photo = data.astronaut()
  x = tf.constant(photo)
  # Equalize is PIL's, to the level.
  np.testing.assert_array_equal(image_ops.equalize(x).numpy(),
                                np.asarray(ImageOps.equalize(Image.fromarray(photo))))
  # Solarize at magnitude 15: threshold int(1.5 * 256) = 384 changes no uint8 pixel.
  np.testing.assert_array_equal(image_ops.solarize(x, 384).numpy(), photo)
  flipped = image_ops.solarize(x, 128).numpy()
  np.testing.assert_array_equal(flipped, np.where(photo < 128, photo, 255 - photo))
  added = image_ops.solarize_add(x, 165).numpy()
  np.testing.assert_array_equal(added, np.where(photo < 128,
                                                np.minimum(photo.astype(int) + 165, 255), photo))
  gray = tf.image.rgb_to_grayscale(x).numpy().astype(np.float32)
  want = np.clip(gray + 2.8 * (photo - gray), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(image_ops.color(x, 2.8).numpy(), want)


def test_cutout_is_a_grey_square_of_the_official_size():
  image = np.zeros((800, 900, 3), np.uint8)
  out = image_ops.cutout(tf.constant(image), 150, tf.constant([3, 4], tf.int64)).numpy()
  grey = (out == image_ops.REPLACE).all(-1)
  ys, xs = np.nonzero(grey)
  assert ys.max() - ys.min() + 1 <= 300 and xs.max() - xs.min() + 1 <= 300
  assert grey.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)   # a rectangle


def test_randaugment_is_seeded_and_keeps_boxes_in_the_image():
  picture, boxes = tf.constant(_picture()), tf.constant([BOX], tf.float32)
  outputs = []
  for seed in range(30):
    image, moved = autoaugment.randaugment(picture, boxes, tf.constant([seed, 1], tf.int64))
    again, moved_again = autoaugment.randaugment(picture, boxes, tf.constant([seed, 1], tf.int64))
    np.testing.assert_array_equal(image.numpy(), again.numpy())
    np.testing.assert_array_equal(moved.numpy(), moved_again.numpy())
    box = moved.numpy()[0]
    assert (box >= 0).all() and box[2] <= H and box[3] <= W
    outputs.append(image.numpy())
  changed = [not np.array_equal(o, _picture()) for o in outputs]
  # Solarize at 384 (and a 0-pixel translation's like) leave the image as it was;
  # most picks change it.
  assert 0.6 < np.mean(changed) < 1.0, np.mean(changed)


@pytest.mark.parametrize('policy', ['v0', 'randaug'])
def test_training_stream_with_a_policy_is_deterministic_and_resumable(config, policy):
  augmented = copy.deepcopy(config)
  augmented.data.autoaugment_policy = policy
  plain, first = train_batches(config, 5), train_batches(augmented, 5)
  for key in ('image_valid', 'images_skipped', 'boxes_dropped'):
    for p, a in zip(plain, first):
      np.testing.assert_array_equal(p[key], a[key], err_msg=key)
  assert any(not np.array_equal(p['boxes'], a['boxes']) for p, a in zip(plain, first))
  for a, b in zip(first, train_batches(augmented, 5)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  for a, b in zip(first[2:], train_batches(augmented, 3, start_step=2)):
    np.testing.assert_array_equal(a['image'], b['image'])
  bad = copy.deepcopy(config)
  bad.data.autoaugment_policy = 'v9'
  with pytest.raises(ValueError, match='autoaugment_policy'):
    input_pipeline.train_data(bad, process_index=0, process_count=1)


def test_more_colour_operations_are_pils_or_the_written_formulas():
  photo = data.coffee()
  x = tf.constant(photo)
  pil = Image.fromarray(photo)
  np.testing.assert_array_equal(image_ops.posterize(x, 2).numpy(),
                                np.asarray(ImageOps.posterize(pil, 2)))
  np.testing.assert_allclose(image_ops.autocontrast(x).numpy(),
                             np.asarray(ImageOps.autocontrast(pil)), atol=1)
  np.testing.assert_allclose(image_ops.sharpness(x, 1.9).numpy().astype(int),
                             np.asarray(ImageEnhance.Sharpness(pil).enhance(1.9)), atol=2)
  np.testing.assert_array_equal(image_ops.brightness(x, 0.5).numpy(),
                                (photo * np.float32(0.5)).astype(np.uint8))
  grey = tf.image.rgb_to_grayscale(x).numpy().astype(np.int32).mean()
  mean = np.float32(np.uint8(grey))
  want = np.clip(mean + np.float32(1.9) * (photo - mean), 0, 255).astype(np.uint8)
  np.testing.assert_allclose(image_ops.contrast(x, 1.9).numpy(), want, atol=1)


def test_operations_inside_boxes_change_only_their_pixels():
  picture = _picture()
  picture[BOX[0]:BOX[2], BOX[1]:BOX[1] + 10] = (10, 250, 10)   # a green stripe on the left
  boxes = tf.constant([BOX], tf.float32)
  flipped, same = image_ops.inside_boxes(tf.constant(picture), boxes, 1.0,
                                         lambda p, s: p[:, ::-1], tf.constant([1, 2], tf.int64))
  flipped = flipped.numpy()
  np.testing.assert_array_equal(same.numpy(), boxes.numpy())
  y0, x0, y1, x1 = BOX
  np.testing.assert_array_equal(flipped[y0:y1 + 1, x0:x1 + 1], picture[y0:y1 + 1, x0:x1 + 1][:, ::-1])
  outside = np.ones(picture.shape[:2], bool)
  outside[y0:y1 + 1, x0:x1 + 1] = False
  np.testing.assert_array_equal(flipped[outside], picture[outside])
  never, _ = image_ops.inside_boxes(tf.constant(picture), boxes, 0.0, lambda p, s: p[:, ::-1],
                                    tf.constant([1, 2], tf.int64))
  np.testing.assert_array_equal(never.numpy(), picture)
  cut, _ = image_ops.box_cutout(tf.constant(picture), boxes, 0.75, tf.constant([5, 6], tf.int64))
  grey = (cut.numpy() == image_ops.REPLACE).all(-1)
  ys, xs = np.nonzero(grey)
  assert y0 - 31 <= ys.min() and ys.max() < y1 + 31 and x0 - 31 <= xs.min() and xs.max() < x1 + 31
  assert 0 < grey.sum() <= 60 * 60


@pytest.mark.parametrize('policy', sorted(autoaugment.AUTOAUGMENT_POLICIES))
def test_every_step_of_every_policy_runs_and_keeps_boxes_in_the_image(policy):
  picture, boxes = tf.constant(_picture()), tf.constant([BOX, (0, 0, 30, 40)], tf.float32)
  for steps in autoaugment.AUTOAUGMENT_POLICIES[policy]:
    for k, (name, prob, level) in enumerate(steps):
      image, moved = autoaugment.apply_op(name, picture, boxes, level, max(prob, 0.5),
                                          tf.constant([k, 3], tf.int64))
      assert image.dtype == tf.uint8 and image.shape == picture.shape, name
      moved = moved.numpy()
      assert (moved >= 0).all() and (moved[:, 2] <= H).all() and (moved[:, 3] <= W).all(), name
  first = autoaugment.augment(picture, boxes, tf.constant([4, 4], tf.int64), policy)
  again = autoaugment.augment(picture, boxes, tf.constant([4, 4], tf.int64), policy)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
