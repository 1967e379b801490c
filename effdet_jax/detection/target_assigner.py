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


def match(iou: jnp.ndarray, valid: jnp.ndarray, match_threshold: float,
          unmatched_threshold: float) -> jnp.ndarray:
  """`[num_gt, num_anchors]` IoU -> per anchor: gt index, BACKGROUND or IGNORED."""
  iou = jnp.where(valid[:, None], iou, -1.0)
  best_gt = jnp.argmax(iou, axis=0).astype(jnp.int32)
  best_iou = jnp.max(iou, axis=0)
  matches = jnp.where(best_iou < unmatched_threshold, BACKGROUND, best_gt)
  between = (best_iou >= unmatched_threshold) & (best_iou < match_threshold)
  matches = jnp.where(between, IGNORED, matches)
  forced = jax.nn.one_hot(jnp.argmax(iou, axis=1), iou.shape[1], dtype=jnp.bool_) & valid[:, None]
  forced_gt = jnp.argmax(forced, axis=0).astype(jnp.int32)
  return jnp.where(jnp.any(forced, axis=0), forced_gt, matches)


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
  matches = match(pairwise_iou(gt_boxes, anchors), valid, match_threshold, unmatched_threshold)
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
