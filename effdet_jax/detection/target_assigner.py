"""Anchor labels for training: the official ArgMax matching, with static shapes.

Anchors whose best IoU is at least `match_threshold` take that ground-truth
box; below `unmatched_threshold` they are background; in between (empty with
the official 0.5 / 0.5) they are ignored. Each ground-truth box additionally
claims its best anchor ("force match"; ties go to the lower index, and of two
boxes claiming one anchor the first wins). Padded and crowd rows take part in
nothing, so a fixed-size `max_instances` input gives the targets of its valid
boxes alone.
"""
from typing import List, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp

from effdet_jax.detection import box_coder
from effdet_jax.detection.boxes import pairwise_iou

BACKGROUND = -1
IGNORED = -2


class AnchorTargets(NamedTuple):
  cls_targets: jnp.ndarray    # [num_anchors] int32: class id, BACKGROUND or IGNORED
  box_targets: jnp.ndarray    # [num_anchors, 4] encoded targets, 0 where not matched
  num_positives: jnp.ndarray  # scalar float32: matched anchors


def _iou_with_anchors(box: jnp.ndarray, anchors: jnp.ndarray) -> jnp.ndarray:
  return pairwise_iou(box[None], anchors)[0]


def match(anchors: jnp.ndarray, gt_boxes: jnp.ndarray, valid: jnp.ndarray, match_threshold: float,
          unmatched_threshold: float) -> jnp.ndarray:
  """Per anchor: the matched gt index, BACKGROUND or IGNORED.

  Two formulations with the same result, chosen per platform when compiled: on
  CPU a loop over the ground-truth boxes up to the last valid one (`_match_loop`),
  elsewhere the `[max_instances, num_anchors]` IoU matrix (`_match_matrix`).
  """
  return jax.lax.platform_dependent(
      anchors, gt_boxes, valid,
      cpu=lambda a, b, v: _match_loop(a, b, v, match_threshold, unmatched_threshold),
      default=lambda a, b, v: _match_matrix(a, b, v, match_threshold, unmatched_threshold))


def _thresholded(best_iou, best_gt, forced_gt, match_threshold, unmatched_threshold):
  matches = jnp.where(best_iou < unmatched_threshold, BACKGROUND, best_gt)
  between = (best_iou >= unmatched_threshold) & (best_iou < match_threshold)
  matches = jnp.where(between, IGNORED, matches)
  return jnp.where(forced_gt >= 0, forced_gt, matches)


def _match_loop(anchors, gt_boxes, valid, match_threshold, unmatched_threshold):
  """One ground-truth box at a time: for D0 with 100 padded rows the IoU matrix
  is 20 MB per image, and the loop is 6x faster on CPU at COCO's ~7 boxes per
  image. A loop of dynamic length serializes on an accelerator (and XLA's cost
  model counts its body once). Ties keep the lower gt index, as argmax over the
  matrix does."""
  num_anchors = anchors.shape[0]
  count = jnp.max(jnp.where(valid, jnp.arange(1, valid.shape[0] + 1), 0))

  def step(i, carry):
    best_iou, best_gt, forced_gt = carry
    iou = jnp.where(valid[i], _iou_with_anchors(gt_boxes[i], anchors), -1.0)
    better = iou > best_iou
    best_gt = jnp.where(better, i, best_gt)
    best_iou = jnp.where(better, iou, best_iou)
    # Force match: the box claims its best anchor unless an earlier box has.
    j = jnp.argmax(iou)
    claim = valid[i] & (forced_gt[j] < 0)
    forced_gt = forced_gt.at[j].set(jnp.where(claim, i, forced_gt[j]))
    return best_iou, best_gt, forced_gt

  init = (jnp.full([num_anchors], -1.0), jnp.zeros([num_anchors], jnp.int32),
          jnp.full([num_anchors], -1, jnp.int32))
  best_iou, best_gt, forced_gt = jax.lax.fori_loop(0, count, step, init)
  return _thresholded(best_iou, best_gt, forced_gt, match_threshold, unmatched_threshold)


def _match_matrix(anchors, gt_boxes, valid, match_threshold, unmatched_threshold):
  """All boxes at once: per anchor the best box (argmax keeps the first of
  equals, as the loop's strict `>`), per box its best anchor, and of the boxes
  claiming one anchor the lowest index (a scatter-min)."""
  max_instances, num_anchors = gt_boxes.shape[0], anchors.shape[0]
  iou = jnp.where(valid[:, None], pairwise_iou(gt_boxes, anchors), -1.0)
  best_gt = jnp.argmax(iou, axis=0).astype(jnp.int32)
  best_iou = jnp.max(iou, axis=0)
  claimant = jnp.where(valid, jnp.arange(max_instances, dtype=jnp.int32), max_instances)
  first = jnp.full([num_anchors], max_instances, jnp.int32).at[jnp.argmax(iou, axis=1)].min(
      claimant)
  forced_gt = jnp.where(first < max_instances, first, -1)
  return _thresholded(best_iou, best_gt, forced_gt, match_threshold, unmatched_threshold)


def assign(anchors: jnp.ndarray, gt_boxes: jnp.ndarray, gt_classes: jnp.ndarray,
           valid: jnp.ndarray, match_threshold: float = 0.5,
           unmatched_threshold: float = 0.5) -> AnchorTargets:
  """Targets of one image.

  Args:
    anchors: `[num_anchors, 4]` in pixels.
    gt_boxes: `[max_instances, 4]` in pixels, padded.
    gt_classes: `[max_instances]` 0-based model classes.
    valid: `[max_instances]` bool: real, non-crowd boxes.
  """
  matches = match(anchors, gt_boxes, valid, match_threshold, unmatched_threshold)
  matched = matches >= 0
  index = jnp.maximum(matches, 0)
  cls_targets = jnp.where(matched, gt_classes[index].astype(jnp.int32), matches)
  encoded = box_coder.encode(gt_boxes[index], anchors)
  box_targets = jnp.where(matched[:, None], encoded, 0.0)
  return AnchorTargets(cls_targets, box_targets, jnp.sum(matches != BACKGROUND).astype(jnp.float32))


def split_levels(values: jnp.ndarray, level_shapes: Sequence[Tuple[int, int]],
                 num_anchors: int) -> List[jnp.ndarray]:
  """One image's per-anchor values `[A, ...]` -> per level `[H, W, num_anchors * ...]`,
  the head outputs' layout; `level_shapes` are `(height, width)`, min to max level."""
  outputs, start = [], 0
  for height, width in level_shapes:
    count = height * width * num_anchors
    outputs.append(values[start:start + count].reshape(height, width, -1))
    start += count
  return outputs


def batch_targets(anchors: jnp.ndarray, boxes: jnp.ndarray, classes: jnp.ndarray,
                  image_valid: jnp.ndarray, level_shapes: Sequence[Tuple[int, int]],
                  num_anchors: int, match_threshold: float = 0.5,
                  unmatched_threshold: float = 0.5) -> Tuple[List[jnp.ndarray], List[jnp.ndarray],
                                                             jnp.ndarray]:
  """A batch of padded ground truth -> what `losses.detection_loss` takes.

  Computed on device inside the train step: for D0 that is ~2 MB of targets
  per image that never cross the host-device link, and the host CPU, the
  scarce resource of an input pipeline, does not compute 5M IoUs per image.

  Args:
    boxes: `[B, M, 4]` in input pixels; `classes`: `[B, M]`, -1 for padding.
    image_valid: `[B]` bool; an image that could not be loaded has every anchor
      ignored, so it adds nothing to the loss.
  Returns:
    per-level class targets `[B, H, W, A]`, box targets `[B, H, W, A * 4]`,
    and `num_positives` `[B]`.
  """
  # The anchors go in batched, so that no division in the box coder is by an
  # operand vmap broadcasts (see box_coder.encode).
  batched_anchors = jnp.broadcast_to(anchors, (boxes.shape[0],) + anchors.shape)
  targets = jax.vmap(lambda a, b, c: assign(a, b, c, c >= 0, match_threshold,
                                            unmatched_threshold))(batched_anchors, boxes, classes)
  cls = jnp.where(image_valid[:, None], targets.cls_targets, IGNORED)
  num_positives = jnp.where(image_valid, targets.num_positives, 0.0)
  split = jax.vmap(lambda v: split_levels(v, level_shapes, num_anchors))
  return split(cls), split(targets.box_targets), num_positives
