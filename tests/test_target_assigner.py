"""Anchor matching as the official ArgMaxMatcher (0.5 / 0.5, force match)."""
from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np

from effdet_jax.detection import box_coder, target_assigner
from effdet_jax.detection.boxes import pairwise_iou
from effdet_jax.detection.target_assigner import BACKGROUND, assign, match

ANCHORS = jnp.array([[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 40, 40], [50, 50, 60, 60]],
                    jnp.float32)


def test_thresholds_force_match_and_padding():
  gt = jnp.array([[0, 2, 10, 12],      # IoU 0.67 with anchor 0, 0.54 with anchor 1
                  [21, 21, 60, 60],    # best IoU 0.26 (anchor 2): only force-matched
                  [0, 0, 0, 0]], jnp.float32)   # padding
  classes = jnp.array([3, 7, 5])
  valid = jnp.array([True, True, False])
  t = assign(ANCHORS, gt, classes, valid)
  np.testing.assert_array_equal(t.cls_targets, [3, 3, 7, BACKGROUND])
  assert float(t.num_positives) == 3.0
  np.testing.assert_allclose(t.box_targets[0], box_coder.encode(gt[0], ANCHORS[0]), atol=1e-6)
  np.testing.assert_array_equal(t.box_targets[3], 0.0)


def test_force_match_conflict_goes_to_the_first_box():
  gt = jnp.array([[50, 50, 59, 59], [51, 51, 60, 60]], jnp.float32)
  matches = match(pairwise_iou(gt, ANCHORS), jnp.array([True, True]), 0.5, 0.5)
  assert int(matches[3]) == 0


def test_no_valid_boxes_gives_no_positives():
  gt = jnp.zeros((5, 4))
  t = assign(ANCHORS, gt, jnp.zeros(5, jnp.int32), jnp.zeros(5, bool))
  np.testing.assert_array_equal(t.cls_targets, BACKGROUND)
  assert float(t.num_positives) == 0.0
  np.testing.assert_array_equal(t.box_targets, 0.0)


def test_ignored_band_between_thresholds():
  gt = jnp.array([[0, 2, 10, 12]], jnp.float32)
  matches = match(pairwise_iou(gt, ANCHORS), jnp.array([True]), 0.6, 0.4)
  # Anchor 1 (IoU 0.54) is ignored; anchor 0 matched; the far ones background.
  np.testing.assert_array_equal(matches, [0, target_assigner.IGNORED, BACKGROUND, BACKGROUND])


def test_split_levels_matches_head_layout():
  values = jnp.arange((4 * 4 + 2 * 2) * 3 * 4).reshape(-1, 4)
  levels = target_assigner.split_levels(values, [(4, 4), (2, 2)], 3)
  assert levels[0].shape == (4, 4, 12) and levels[1].shape == (2, 2, 12)
  np.testing.assert_array_equal(levels[0][0, 1, :4], values[3])   # location 1, anchor 0


box = st.tuples(st.floats(0, 90), st.floats(0, 90), st.floats(1, 60), st.floats(1, 60)).map(
    lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])


@settings(max_examples=40, deadline=None)
@given(st.lists(box, min_size=2, max_size=2), st.lists(box, min_size=1, max_size=6))
def test_iou_symmetric_and_bounded(a, b):
  a, b = jnp.array(a, jnp.float32), jnp.array(b, jnp.float32)
  ab, ba = pairwise_iou(a, b), pairwise_iou(b, a)
  np.testing.assert_allclose(ab, ba.T, atol=1e-6)
  assert float(ab.min()) >= 0.0 and float(ab.max()) <= 1.0 + 1e-6
  np.testing.assert_allclose(jnp.diag(pairwise_iou(a, a)), 1.0, atol=1e-5)


def test_assign_is_jittable_with_static_shapes():
  fn = jax.jit(jax.vmap(assign, in_axes=(None, 0, 0, 0)))
  gt = jnp.tile(jnp.array([[0, 2, 10, 12]], jnp.float32)[None], (2, 1, 1))
  t = fn(ANCHORS, gt, jnp.array([[1], [2]]), jnp.array([[True], [False]]))
  np.testing.assert_array_equal(t.num_positives, [2.0, 0.0])
