"""Mosaic: four images around a point in the middle half, boxes moving with their pixels;
in the training stream deterministic, resumable, and bad data counted once."""
import copy

import numpy as np
import pytest
import tensorflow as tf

from data_helpers import coco_config, train_batches
from effdet_jax.data import mosaic, sanitize, synthetic

OUT = (96, 128)


def _images():
  """Four images of different sizes and backgrounds, each with one bright square
  and its box."""
  sizes = [(40, 60), (80, 50), (30, 30), (64, 100)]
  squares = [(10, 20, 30, 40), (30, 10, 60, 40), (5, 5, 20, 25), (20, 50, 50, 90)]
  pixels = np.zeros((4, 80, 100, 3), np.uint8)
  for k, ((h, w), (y0, x0, y1, x1)) in enumerate(zip(sizes, squares)):
    pixels[k, :h, :w] = 30 * (k + 1)
    pixels[k, y0:y1, x0:x1] = (250, 200 - 40 * k, 10)
  boxes = np.zeros((4, 3, 4), np.float32)
  boxes[:, 0] = squares
  return pixels, np.array(sizes, np.int32), boxes, np.ones(4, np.int32), np.full((4, 3), -1, np.int32)


def test_divide_point_is_in_the_middle_half_of_each_side():
  points = np.array([mosaic.divide_point(OUT, tf.constant([s, 7], tf.int64)).numpy()
                     for s in range(300)])
  assert points[:, 0].min() >= 24 and points[:, 0].max() < 72     # int(96 * .25), int(96 * .75)
  assert points[:, 1].min() >= 32 and points[:, 1].max() < 96
  assert points[:, 0].max() - points[:, 0].min() > 40            # spread over the range


def test_four_images_fill_their_rectangles_and_boxes_follow_their_pixels():
  pixels, sizes, boxes, counts, classes = _images()
  classes[:, 0] = [1, 2, 3, 4]
  point = tf.constant([40, 50])
  image, out_boxes, out_classes = (t.numpy() for t in mosaic.combine(
      tf.constant(pixels), tf.constant(sizes), tf.constant(boxes), tf.constant(counts),
      tf.constant(classes), point, OUT))
  assert image.shape == (*OUT, 3) and image.dtype == np.uint8
  np.testing.assert_array_equal(out_classes, [1, 2, 3, 4])
  rects = mosaic.rectangles(point, OUT).numpy()
  np.testing.assert_array_equal(rects, [[0, 0, 40, 50], [40, 0, 56, 50], [0, 50, 40, 78],
                                        [40, 50, 56, 78]])
  for k, (top, left, height, width) in enumerate(rects):
    # Each rectangle holds its image: its corner is that image's background...
    assert (image[top, left] == 30 * (k + 1)).all()
    # ... and the box, scaled and shifted, frames the bright square.
    h, w = sizes[k]
    sy, sx = height / h, width / w
    want = boxes[k, 0] * [sy, sx, sy, sx] + [top, left, top, left]
    np.testing.assert_allclose(out_boxes[k], want, rtol=1e-6)
    y0, x0, y1, x1 = np.round(out_boxes[k]).astype(int)
    inside = image[y0 + 1:y1 - 1, x0 + 1:x1 - 1]
    assert (inside[..., 0] == 250).all() and (inside[..., 1] == 200 - 40 * k).all()


def test_windows_start_at_every_example():
  examples = tf.data.Dataset.range(6).map(lambda i: {
      'pixels': tf.zeros(tf.stack([i + 1, 2, 3]), tf.uint8), 'boxes': tf.zeros(tf.stack([i, 4])),
      'classes': tf.zeros(tf.stack([i]), tf.int32), 'image_valid': True, 'image_id': i,
      'images_skipped': tf.zeros([2], tf.int32), 'boxes_dropped': tf.zeros([8], tf.int32),
      'boxes_clipped': tf.constant(0), 'seed': tf.stack([i, i])})
  groups = list(mosaic.windows(examples).as_numpy_iterator())
  assert [list(g['image_id']) for g in groups] == [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]]
  np.testing.assert_array_equal(groups[1]['size'][:, 0], [2, 3, 4, 5])
  np.testing.assert_array_equal(groups[1]['count'], [1, 2, 3, 4])
  assert groups[1]['classes'].shape == (4, 4) and groups[1]['classes'][0, 1] == -1


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('shapes'))
  synthetic.ensure_dataset(root, num_train=10, num_val=2, image_size=64, seed=3)
  c = coco_config(synthetic.annotation_path(root, 'train'), synthetic.image_dir(root, 'train'))
  c.data.jitter_min = c.data.jitter_max = 1.0   # no crop: every box reaches the batch
  return c


def test_training_stream_with_mosaic_is_deterministic_resumable_and_counts_once(config):
  with_mosaic = copy.deepcopy(config)
  with_mosaic.data.mosaic = True
  plain, first = train_batches(config, 5), train_batches(with_mosaic, 5)
  # Each example is the first image of one mosaic, in the stream's order, and
  # brings its own validity and bad-data counts.
  for key in ('image_id', 'image_valid', 'images_skipped', 'boxes_dropped'):
    for p, m in zip(plain, first):
      np.testing.assert_array_equal(p[key], m[key], err_msg=key)
  # Four images bring more boxes than one.
  assert sum((m['classes'] >= 0).sum() for m in first) > 2 * sum((p['classes'] >= 0).sum()
                                                                 for p in plain)
  for a, b in zip(first, train_batches(with_mosaic, 5)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # 10 images, batches of 4: step 3 starts inside the second epoch.
  for a, b in zip(first[3:], train_batches(with_mosaic, 2, start_step=3)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_boxes_past_max_instances_are_dropped_and_counted(config):
  few = copy.deepcopy(config)
  few.data.mosaic = True
  few.data.max_instances_per_image = 2
  plain = copy.deepcopy(few)
  plain.data.mosaic = False
  over = sanitize.BOX_DROP_REASONS.index('over_max_instances')
  for p, m in zip(train_batches(plain, 3), train_batches(few, 3)):
    assert m['boxes'].shape[1] == 2 and ((m['classes'] >= 0).sum(1) == 2).all()
    extra = m['boxes_dropped'][:, over] - p['boxes_dropped'][:, over]
    assert (extra > 0).all()     # every mosaic of these images has more than 2 boxes
    np.testing.assert_array_equal(np.delete(m['boxes_dropped'], over, 1),
                                  np.delete(p['boxes_dropped'], over, 1))
