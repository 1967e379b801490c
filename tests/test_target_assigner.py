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
  matches = match(ANCHORS, gt, jnp.array([True, True]), 0.5, 0.5)
  assert int(matches[3]) == 0


def test_no_valid_boxes_gives_no_positives():
  gt = jnp.zeros((5, 4))
  t = assign(ANCHORS, gt, jnp.zeros(5, jnp.int32), jnp.zeros(5, bool))
  np.testing.assert_array_equal(t.cls_targets, BACKGROUND)
  assert float(t.num_positives) == 0.0
  np.testing.assert_array_equal(t.box_targets, 0.0)


def test_ignored_band_between_thresholds():
  gt = jnp.array([[0, 2, 10, 12]], jnp.float32)
  matches = match(ANCHORS, gt, jnp.array([True]), 0.6, 0.4)
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


def _matrix_match(iou, valid, match_threshold, unmatched_threshold):
  """The ArgMaxMatcher written over the full IoU matrix, as a reference."""
  iou = np.where(valid[:, None], iou, -1.0)
  best_gt, best_iou = iou.argmax(0), iou.max(0)
  matches = np.where(best_iou < unmatched_threshold, BACKGROUND, best_gt)
  matches = np.where((best_iou >= unmatched_threshold) & (best_iou < match_threshold),
                     target_assigner.IGNORED, matches)
  for gt in range(len(valid) - 1, -1, -1):   # the first box claiming an anchor wins
    if valid[gt]:
      matches[iou[gt].argmax()] = gt
  return matches


GRID = jnp.asarray([[y, x, y + s, x + s] for s in (8.0, 16.0) for y in range(0, 64, 8)
                    for x in range(0, 64, 8)], jnp.float32)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(box, st.booleans()), min_size=1, max_size=7),
       st.sampled_from([(0.5, 0.5), (0.6, 0.4)]))
def test_both_matchers_equal_the_iou_matrix_argmax(rows, thresholds):
  """The CPU loop, the accelerators' matrix form and `match` (the CPU's pick
  here) all give the reference's matches, ties and conflicts included."""
  gt = jnp.array([r[0] for r in rows], jnp.float32)
  valid = np.array([r[1] for r in rows])
  want = _matrix_match(np.asarray(pairwise_iou(gt, GRID)), valid, *thresholds)
  for matcher in (match, target_assigner._match_loop, target_assigner._match_matrix):
    np.testing.assert_array_equal(matcher(GRID, gt, jnp.asarray(valid), *thresholds), want)


def test_both_matchers_give_the_same_train_targets_on_d0_anchors():
  """Over D0's 49104 anchors and 100 padded rows (crowded, overlapping and
  tiny boxes, some rows invalid), under jit and vmap as the train step runs them."""
  from effdet_jax.configs.efficientdet import get_config
  from effdet_jax.detection import anchors as anchors_lib
  anchors = jnp.asarray(anchors_lib.anchors_for(get_config('d0')))
  rng = np.random.default_rng(0)
  corners = rng.uniform(0, 512, (2, 100, 2, 2))
  boxes = np.concatenate([corners.min(2), corners.max(2)], -1).astype(np.float32)
  boxes[:, 10:20] = boxes[:, :10] + rng.uniform(0, 2, (2, 10, 4))   # near-duplicates
  boxes[:, 20:25, 2:] = boxes[:, 20:25, :2] + 1.0                 # boxes of one pixel
  classes = rng.integers(-1, 90, (2, 100)).astype(np.int32)
  classes[1, :] = -1                                               # an image without boxes
  valid = classes >= 0
  outputs = []
  for matcher in (target_assigner._match_loop, target_assigner._match_matrix):
    fn = jax.jit(jax.vmap(lambda b, v: matcher(anchors, b, v, 0.5, 0.5)))
    outputs.append(np.asarray(fn(jnp.asarray(boxes), jnp.asarray(valid))))
  np.testing.assert_array_equal(outputs[0], outputs[1])
  assert (outputs[0][0] >= 0).sum() > 100 and (outputs[0][1] == BACKGROUND).all()


def test_batch_targets_levels_and_unloadable_images():
  level_shapes = [(8, 8), (4, 4)]
  anchors = jnp.concatenate([GRID[:64], GRID[64:][::4]])   # 8x8 + 4x4 locations, 1 anchor each
  boxes = jnp.tile(jnp.array([[[8, 8, 16, 16], [0, 0, 0, 0]]], jnp.float32), (2, 1, 1))
  classes = jnp.array([[4, -1], [4, -1]])
  cls, box, num_positives = target_assigner.batch_targets(
      anchors, boxes, classes, jnp.array([True, False]), level_shapes, 1)
  assert [c.shape for c in cls] == [(2, 8, 8, 1), (2, 4, 4, 1)]
  assert [b.shape for b in box] == [(2, 8, 8, 4), (2, 4, 4, 4)]
  assert int(cls[0][0, 1, 1, 0]) == 4 and float(num_positives[0]) >= 1
  # An image flagged invalid contributes nothing: every anchor ignored, no positives.
  assert all(bool(jnp.all(c[1] == target_assigner.IGNORED)) for c in cls)
  assert float(num_positives[1]) == 0.0
