"""Network outputs -> detections, jittable with fixed-size outputs.

sigmoid scores, pre-NMS candidates, box decoding, then hard NMS or Gaussian
soft-NMS, either class-agnostic (`per_class=False`, the official inference
path `postprocess_global`) or within each class (the official evaluation path),
keeping at most `max_detections` per image, clipped to the model input and
scaled back to the original image.

Soft-NMS is the greedy algorithm of TF's `NonMaxSuppressionV5`: repeatedly
select the candidate with the highest current score and multiply every other
score by `exp(-iou^2 / sigma)` (the paper's sigma; TF's op takes sigma / 2);
scores at or below `score_threshold` are never selected. TF evaluates the decay
lazily, which selects the same boxes in the same order.
"""
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from effdet_jax.detection import box_coder
from effdet_jax.detection.boxes import pairwise_iou

NMS_METHODS = ('gaussian', 'hard')


class Detections(NamedTuple):
  boxes: jnp.ndarray     # [B, K, 4] [ymin, xmin, ymax, xmax], original image pixels
  scores: jnp.ndarray    # [B, K]
  classes: jnp.ndarray   # [B, K] int32, 0-based model classes
  num_valid: jnp.ndarray  # [B] int32: the first num_valid rows are detections


def merge_levels(cls_outputs: Sequence[jnp.ndarray], box_outputs: Sequence[jnp.ndarray],
                 num_classes: int):
  """Per-level head outputs -> `[B, A, num_classes]` logits and `[B, A, 4]` box outputs."""
  batch = cls_outputs[0].shape[0]
  logits = jnp.concatenate([c.reshape(batch, -1, num_classes) for c in cls_outputs], axis=1)
  boxes = jnp.concatenate([b.reshape(batch, -1, 4) for b in box_outputs], axis=1)
  return logits.astype(jnp.float32), boxes.astype(jnp.float32)


def candidates(logits: jnp.ndarray, box_outputs: jnp.ndarray, anchors: jnp.ndarray,
               max_nms_inputs: int):
  """One image's NMS inputs: `(boxes [N, 4], scores [N], classes [N])`.

  `max_nms_inputs > 0`: the top scores over all anchors x classes (an anchor may
  enter with several classes). 0: each anchor once, with its best class.
  """
  num_classes = logits.shape[-1]
  if max_nms_inputs > 0:
    # Exact top-k over anchors x classes in two cheap stages: an entry of the
    # top k belongs to an anchor whose best logit is among the top k anchors'.
    k = min(max_nms_inputs, logits.size)
    k_anchors = min(k, logits.shape[0])
    _, top_anchors = jax.lax.top_k(jnp.max(logits, axis=-1), k_anchors)
    top_logits, top = jax.lax.top_k(logits[top_anchors].reshape(-1), k)
    anchor_idx, classes = top_anchors[top // num_classes], top % num_classes
    boxes = box_coder.decode(box_outputs[anchor_idx], anchors[anchor_idx])
    return boxes, jax.nn.sigmoid(top_logits), classes.astype(jnp.int32)
  boxes = box_coder.decode(box_outputs, anchors)
  return (boxes, jax.nn.sigmoid(jnp.max(logits, axis=-1)),
          jnp.argmax(logits, axis=-1).astype(jnp.int32))


def nms(boxes: jnp.ndarray, scores: jnp.ndarray, classes: jnp.ndarray, *, method: str,
        iou_threshold: float, sigma: float, score_threshold: float, max_detections: int,
        per_class: bool):
  """Greedy hard or Gaussian soft NMS of one image -> (indices, scores, num_valid)."""
  if method not in NMS_METHODS:
    raise ValueError(f'postprocess.nms_method must be one of {NMS_METHODS}, got {method!r}')

  def step(k, state):
    current, alive, indices, selected, count = state
    masked = jnp.where(alive, current, -jnp.inf)
    i = jnp.argmax(masked)       # ties go to the lower index, as in TF
    ok = alive[i]
    iou = pairwise_iou(boxes[i][None], boxes)[0]
    if per_class:
      iou = jnp.where(classes == classes[i], iou, 0.0)
    if method == 'hard':
      survivors = alive & (iou <= iou_threshold)
      decayed = current
    else:
      decayed = current * jnp.exp(-(iou * iou) / sigma)
      survivors = alive & (decayed > score_threshold)
    survivors = survivors.at[i].set(False)
    current = jnp.where(ok, decayed, current)
    alive = jnp.where(ok, survivors, alive)
    indices = indices.at[k].set(jnp.where(ok, i, 0))
    selected = selected.at[k].set(jnp.where(ok, masked[i], 0.0))
    return current, alive, indices, selected, count + ok.astype(jnp.int32)

  init = (scores, scores > score_threshold, jnp.zeros(max_detections, jnp.int32),
          jnp.zeros(max_detections, scores.dtype), jnp.int32(0))
  _, _, indices, selected, count = jax.lax.fori_loop(0, max_detections, step, init)
  return indices, selected, count


def settings(postprocess_config, per_class: bool) -> dict:
  """`postprocess()` keyword arguments from a config's `postprocess` section."""
  p = postprocess_config
  return dict(method=p.nms_method, iou_threshold=p.iou_threshold, sigma=p.sigma,
              score_threshold=p.score_threshold, max_nms_inputs=p.max_nms_inputs,
              max_detections=p.max_detections, per_class=per_class)


def postprocess(cls_outputs: Sequence[jnp.ndarray], box_outputs: Sequence[jnp.ndarray],
                anchors: jnp.ndarray, image_scales: jnp.ndarray, *, image_size,
                num_classes: int, method: str = 'gaussian', iou_threshold: float = 0.5,
                sigma: float = 0.5, score_threshold: float = 0.001, max_nms_inputs: int = 0,
                max_detections: int = 100, per_class: bool = False) -> Detections:
  """Detections of a batch.

  Args:
    cls_outputs, box_outputs: the model's per-level outputs.
    anchors: `[A, 4]` for the model input size.
    image_scales: `[B]` original pixels per model-input pixel.
    image_size: the model input `(height, width)`, to clip boxes to.
  """
  logits, boxes = merge_levels(cls_outputs, box_outputs, num_classes)
  height, width = image_size

  def one_image(logits, box_out, scale):
    cand_boxes, cand_scores, cand_classes = candidates(logits, box_out, anchors, max_nms_inputs)
    idx, scores, count = nms(cand_boxes, cand_scores, cand_classes, method=method,
                             iou_threshold=iou_threshold, sigma=sigma,
                             score_threshold=score_threshold, max_detections=max_detections,
                             per_class=per_class)
    valid = jnp.arange(max_detections) < count
    limits = jnp.array([height, width, height, width], jnp.float32)
    out_boxes = jnp.clip(cand_boxes[idx], 0.0, limits) * scale
    return (jnp.where(valid[:, None], out_boxes, 0.0), scores,
            jnp.where(valid, cand_classes[idx], 0), count)

  out = jax.vmap(one_image)(logits, boxes, image_scales.astype(jnp.float32))
  return Detections(*out)
