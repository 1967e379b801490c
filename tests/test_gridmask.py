"""GridMask: the official grid, probabilities and rotation, stateless, boxes unmoved."""
import copy
from statistics import NormalDist

import numpy as np
import pytest
import tensorflow as tf

from data_helpers import train_batches
from effdet_jax.data import gridmask
from test_input_pipeline import config  # noqa: F401  (the module's dataset fixture)

ALWAYS = 1e9   # prob: N(0, 1) < ALWAYS, the mask is always applied
IMAGE = np.full((120, 160, 3), 200, np.uint8)


def _mask(seed, **kwargs):
  out = gridmask.grid_mask(tf.constant(IMAGE), tf.constant([seed, 0], tf.int64), **kwargs).numpy()
  assert np.isin(out, [0, 200]).all()   # each pixel kept or zeroed, all channels alike
  assert (out == out[..., :1]).all()
  return out[..., 0] == 0


def _runs(flags):
  """Lengths of the runs of True, leaving out the ones touching either end."""
  runs, count = [], 0
  for i, f in enumerate(flags):
    if f:
      count += 1
    elif count:
      runs.append((i - count, count))
      count = 0
  return [n for start, n in runs if start > 0]


@pytest.mark.parametrize('seed', range(6))
def test_unrotated_holes_are_the_official_grid(seed):
  """Holes where neither a kept row band nor a kept column band passes: a
  product set, of period gridblock in [min(h/2, 0.3w), max(h/2, 0.3w)] = [48, 60],
  kept bands int(0.6 * gridblock + 0.5) wide."""
  holes = _mask(seed, prob=ALWAYS, rotate=0.0)
  rows, cols = holes.any(axis=1), holes.any(axis=0)
  np.testing.assert_array_equal(holes, rows[:, None] & cols[None, :])
  hole_runs = _runs(rows) + _runs(cols)
  assert hole_runs and len(set(hole_runs)) == 1, hole_runs    # one hole size
  hole = hole_runs[0]
  blocks = [g for g in range(48, 61) if g - max(int(g * 0.6 + 0.5), 1) == hole]
  assert blocks, hole
  assert 0.08 < holes.mean() < 0.25   # ~0.4^2 of each cell


def test_ratio_one_keeps_random_bands_and_a_large_rotation_keeps_the_pixels():
  for seed in range(4):
    assert _mask(seed, prob=ALWAYS, ratio=1.0, rotate=0.0).mean() < 1
  rotated = _mask(0, prob=ALWAYS, rotate=45.0)
  rows, cols = rotated.any(axis=1), rotated.any(axis=0)
  assert rotated.any() and not np.array_equal(rotated, rows[:, None] & cols[None, :])


def test_applied_with_the_officials_probability_and_seeded():
  """The official compares N(0, 1) with prob: 0.5 applies it to Phi(0.5) = 69% of images."""
  applied = np.mean([_mask(seed).any() for seed in range(300)])
  assert abs(applied - NormalDist().cdf(0.5)) < 0.08, applied
  np.testing.assert_array_equal(_mask(7, prob=ALWAYS), _mask(7, prob=ALWAYS))
  assert not np.array_equal(_mask(7, prob=ALWAYS), _mask(8, prob=ALWAYS))


def test_training_stream_with_grid_mask_is_deterministic_resumable_boxes_unmoved(config):
  masked = copy.deepcopy(config)
  masked.data.grid_mask = True
  plain, first = train_batches(config, 5), train_batches(masked, 5)
  for key in ('boxes', 'classes', 'image_valid', 'images_skipped', 'boxes_dropped'):
    for p, m in zip(plain, first):
      np.testing.assert_array_equal(p[key], m[key], err_msg=key)
  assert any(not np.array_equal(p['image'], m['image']) for p, m in zip(plain, first))
  again = train_batches(masked, 5)
  resumed = train_batches(masked, 3, start_step=2)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  for a, b in zip(first[2:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
