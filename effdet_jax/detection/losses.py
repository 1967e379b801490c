"""EfficientDet losses: sigmoid focal loss, Huber box loss, optional IoU-family
box loss, each normalized by the positives of the whole (global) batch + 1.

Under `jit` with a batch-sharded input the sums run over the global batch, so
the normalizer is the official cross-replica one without any axis name.
"""
import functools
import math
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from effdet_jax.detection import box_coder
from effdet_jax.detection.target_assigner import IGNORED
from effdet_jax.runtime import cpu_kernels, precision

IOU_TYPES = ('iou', 'giou', 'diou', 'ciou')


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def focal_loss(logits, targets, alpha: float, gamma: float, label_smoothing: float = 0.0):
  """Elementwise sigmoid focal loss; `targets` are 0/1 of the logits' shape.

  `alpha_t * (1 - p_t)^gamma * CE(logits, smoothed targets)`, the official
  formula, with a hand-written gradient. Over `B x anchors x classes` elements
  autodiff's version shares its exp/log/pow results between the loss and the
  gradient, and XLA's CPU backend then writes each of them to memory rather
  than recompute it (1.2 s of a 6 s D0 step). Here the loss is one fused pass
  and the gradient nearly one, each with its own transcendentals (0.65 s).
  """
  return _focal_value(logits, targets, alpha, gamma, label_smoothing)


def _focal_value(logits, targets, alpha, gamma, label_smoothing):
  e = jnp.exp(-jnp.abs(logits))
  inv = 1.0 / (1.0 + e)
  prob = jnp.where(logits >= 0, inv, e * inv)                 # sigmoid(logits)
  q, alpha_factor, smoothed = _target_terms(prob, targets, alpha, label_smoothing)
  # Stable sigmoid cross-entropy: max(x, 0) - x * z + log(1 + exp(-|x|)).
  ce = jnp.maximum(logits, 0) - logits * smoothed + jnp.log1p(e)
  return alpha_factor * _power(q, gamma) * ce


def _target_terms(prob, targets, alpha, label_smoothing):
  """`1 - p_t`, `alpha_t` and the smoothed targets."""
  q = targets * (1.0 - prob) + (1.0 - targets) * prob
  alpha_factor = targets * alpha + (1.0 - targets) * (1.0 - alpha)
  smoothed = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
  return q, alpha_factor, smoothed


def _power(q, exponent: float):
  """`q ** exponent` for q in [0, 1], without pow for the usual exponents (and 0
  at q = 0 for a negative one, where the gradient's factor meets a zero)."""
  shortcuts = {0.0: jnp.ones_like, 0.5: jnp.sqrt, 1.0: lambda v: v,
               1.5: lambda v: v * jnp.sqrt(v), 2.0: lambda v: v * v}
  if exponent in shortcuts:
    return shortcuts[exponent](q)
  if exponent > 0:
    return q ** exponent
  return jnp.where(q > 0, q ** exponent, 0.0)


def _focal_fwd(logits, targets, alpha, gamma, label_smoothing):
  return _focal_value(logits, targets, alpha, gamma, label_smoothing), (logits, targets)


def _focal_bwd(alpha, gamma, label_smoothing, residuals, grad):
  # The barrier keeps XLA from merging these exp/log with the forward pass's.
  logits, targets = jax.lax.optimization_barrier(residuals)
  prob = jax.nn.sigmoid(logits)
  q, alpha_factor, smoothed = _target_terms(prob, targets, alpha, label_smoothing)
  ce = jnp.maximum(logits, 0) - logits * smoothed + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  q_pow = _power(q, gamma - 1.0)
  d_q = (1.0 - 2.0 * targets) * prob * (1.0 - prob)
  d_loss = alpha_factor * (gamma * q_pow * d_q * ce + _power(q, gamma) * (prob - smoothed))
  return grad * d_loss, jnp.zeros_like(targets)


focal_loss.defvjp(_focal_fwd, _focal_bwd)


def class_loss_sum(logits, targets, alpha: float, gamma: float, label_smoothing: float = 0.0):
  """The focal loss summed over the anchors not ignored: `logits` `[..., classes]`,
  `targets` `[...]` int (class, BACKGROUND or IGNORED). On CPU the hand-written
  kernel where it is built (loss and gradient in one pass; float32 only), else XLA."""
  if cpu_kernels.targets() is None or logits.dtype != jnp.float32:
    return _xla_class_loss_sum(logits, targets, alpha, gamma, label_smoothing)
  return _fused_class_loss_sum(logits, targets, alpha, gamma, label_smoothing)


def _xla_class_loss_sum(logits, targets, alpha, gamma, label_smoothing):
  onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
  loss = focal_loss(logits, onehot, alpha, gamma, label_smoothing)
  return jnp.sum(jnp.where((targets == IGNORED)[..., None], 0.0, loss))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fused_class_loss_sum(logits, targets, alpha, gamma, label_smoothing):
  return _fused_value_and_grad(logits, targets, alpha, gamma, label_smoothing)[0]


def _fused_value_and_grad(logits, targets, alpha, gamma, label_smoothing):
  name = cpu_kernels.targets().focal_loss

  def on_cpu(logits, targets):
    rows, classes = targets.size, logits.shape[-1]
    total, grad = jax.ffi.ffi_call(name, (jax.ShapeDtypeStruct((), jnp.float32),
                                          jax.ShapeDtypeStruct((rows, classes), jnp.float32)))(
        logits.reshape(rows, classes), targets.reshape(rows).astype(jnp.int32),
        ignored=np.int32(IGNORED), alpha=np.float32(alpha), gamma=np.float32(gamma),
        smoothing=np.float32(label_smoothing))
    return total, grad.reshape(logits.shape)

  def elsewhere(logits, targets):
    return jax.value_and_grad(_xla_class_loss_sum)(logits, targets, alpha, gamma, label_smoothing)

  return jax.lax.platform_dependent(logits, targets, cpu=on_cpu, default=elsewhere)


def _fused_fwd(logits, targets, alpha, gamma, label_smoothing):
  return _fused_value_and_grad(logits, targets, alpha, gamma, label_smoothing)


def _fused_bwd(alpha, gamma, label_smoothing, grad_logits, grad):
  return grad * grad_logits, None


_fused_class_loss_sum.defvjp(_fused_fwd, _fused_bwd)


def huber_loss(predictions, targets, delta: float):
  """The Huber loss; `delta` as the official's Keras/TF1 Huber takes it, a float32
  constant (in float64, 0.1 is 0.10000000149)."""
  delta = precision.as_tf_constant(delta, predictions.dtype)
  error = jnp.abs(predictions - targets)
  quadratic = jnp.minimum(error, delta)
  return 0.5 * quadratic ** 2 + delta * (error - quadratic)


def _iou_terms(pred, target, iou_type: str):
  """IoU / GIoU / DIoU / CIoU of matching boxes `[..., 4]` (the official formulas)."""
  p_h = jnp.maximum(pred[..., 2] - pred[..., 0], 0)
  p_w = jnp.maximum(pred[..., 3] - pred[..., 1], 0)
  t_h = jnp.maximum(target[..., 2] - target[..., 0], 0)
  t_w = jnp.maximum(target[..., 3] - target[..., 1], 0)
  inter_h = jnp.maximum(jnp.minimum(pred[..., 2], target[..., 2]) -
                        jnp.maximum(pred[..., 0], target[..., 0]), 0)
  inter_w = jnp.maximum(jnp.minimum(pred[..., 3], target[..., 3]) -
                        jnp.maximum(pred[..., 1], target[..., 1]), 0)
  inter = inter_h * inter_w
  union = p_h * p_w + t_h * t_w - inter
  iou = _divide_no_nan(inter, union)
  if iou_type == 'iou':
    return iou
  enc_h = jnp.maximum(pred[..., 2], target[..., 2]) - jnp.minimum(pred[..., 0], target[..., 0])
  enc_w = jnp.maximum(pred[..., 3], target[..., 3]) - jnp.minimum(pred[..., 1], target[..., 1])
  if iou_type == 'giou':
    enclose = jnp.maximum(enc_h, 0) * jnp.maximum(enc_w, 0)
    return iou - _divide_no_nan(enclose - union, enclose)
  center_dist = (((pred[..., 0] + pred[..., 2]) - (target[..., 0] + target[..., 2])) / 2) ** 2 + \
                (((pred[..., 1] + pred[..., 3]) - (target[..., 1] + target[..., 3])) / 2) ** 2
  diou = iou - _divide_no_nan(center_dist, enc_h ** 2 + enc_w ** 2)
  if iou_type == 'diou':
    return diou
  # CIoU's v = 4/pi^2 (atan(w_t/h_t) - atan(w/h))^2, as a constant: the official's
  # custom gradient for v (iou_utils._get_v) is taken with respect to the target's
  # height and width, so no gradient of v reaches the prediction; alpha, which the
  # paper holds constant, is differentiated. Loss and gradient equal the official's
  # (tests/test_losses.py).
  v = jax.lax.stop_gradient(
      4 * ((jnp.arctan(_divide_no_nan(t_w, t_h)) - jnp.arctan(_divide_no_nan(p_w, p_h)))
           / math.pi) ** 2)
  alpha = _divide_no_nan(v, (1 - iou) + v)
  return diou - alpha * v


def _divide_no_nan(a, b):
  safe = jnp.where(b == 0, 1, b)
  return jnp.where(b == 0, 0.0, a / safe)


def detection_loss(cls_outputs: Sequence[jnp.ndarray], box_outputs: Sequence[jnp.ndarray],
                   cls_targets: Sequence[jnp.ndarray], box_targets: Sequence[jnp.ndarray],
                   num_positives: jnp.ndarray, num_classes: int, alpha: float, gamma: float,
                   delta: float, box_loss_weight: float, label_smoothing: float = 0.0,
                   iou_loss_type: str = '', iou_loss_weight: float = 1.0,
                   iou_official_anchor_order: bool = True,
                   anchors: Optional[jnp.ndarray] = None) -> Dict[str, jnp.ndarray]:
  """The official detection loss over all levels of a batch.

  Args:
    cls_outputs, box_outputs: per level `[B, H, W, A * num_classes]`, `[B, H, W, A * 4]`.
    cls_targets: per level `[B, H, W, A]` int: class, -1 background, -2 ignored.
    box_targets: per level `[B, H, W, A * 4]`, 0 where not matched.
    num_positives: `[B]` matched anchors per image.
    anchors: `[num_anchors, 4]`, needed for an IoU-family loss.
    iou_official_anchor_order: decode the IoU loss's rows as the official does (below).
  Returns:
    `loss` (= cls + box_loss_weight * box [+ iou_loss_weight * iou]), `cls_loss`,
    `box_loss` and, with an IoU type, `box_iou_loss`.
  """
  normalizer = jnp.sum(num_positives) + 1.0
  cls_loss = box_loss = 0.0
  for logits, targets in zip(cls_outputs, cls_targets):
    logits = precision.at_least_float32(logits).reshape(*targets.shape, num_classes)
    cls_loss += class_loss_sum(logits, targets, alpha, gamma, label_smoothing) / normalizer
  for outputs, targets in zip(box_outputs, box_targets):
    # As the official: coordinates whose target is exactly 0 carry no loss.
    outputs = precision.at_least_float32(outputs)
    mask = (targets != 0.0).astype(outputs.dtype)
    box_loss += jnp.sum(huber_loss(outputs, targets.astype(outputs.dtype), delta) * mask) / (
        normalizer * 4.0)
  result = {'cls_loss': cls_loss, 'box_loss': box_loss,
            'loss': cls_loss + box_loss_weight * box_loss}
  if iou_loss_type:
    if iou_loss_type not in IOU_TYPES:
      raise ValueError(f"loss.iou_loss_type must be '' (none) or one of {IOU_TYPES}, "
                       f'got {iou_loss_type!r}')
    if anchors is None:
      raise ValueError('an IoU-family box loss needs the anchors')
    batch = box_outputs[0].shape[0]
    if iou_official_anchor_order:
      # The official rows: level by level, each level's images one after another,
      # decoded with the anchors repeated image by image: past the first image's
      # first level, a row meets another location's (or level's) anchor.
      flat_out = jnp.concatenate([o.reshape(-1, 4) for o in box_outputs])
      flat_tgt = jnp.concatenate([t.reshape(-1, 4) for t in box_targets])
      anchors = jnp.tile(anchors, (batch, 1))
    else:   # each row with its own anchor
      flat_out = jnp.concatenate([o.reshape(batch, -1, 4) for o in box_outputs], axis=1)
      flat_tgt = jnp.concatenate([t.reshape(batch, -1, 4) for t in box_targets], axis=1)
    flat_out = precision.at_least_float32(flat_out)
    # As the official (tf2/train_lib.py's BoxIouLoss): both boxes are decoded and then
    # multiplied, coordinate by coordinate, by `target != 0`, so where a matched
    # anchor's encoded target has an exact 0 (its centre on the anchor's centre) the
    # decoded coordinate of that index becomes 0; an anchor counts where that masked
    # target box is non-empty. On the reference batch 4 of 1164 matched coordinates are
    # 0, which moves the GIoU loss by 1.6% (docs/parity.md).
    mask = (flat_tgt != 0.0).astype(flat_out.dtype)
    pred = box_coder.decode(flat_out, anchors) * mask
    target = box_coder.decode(flat_tgt.astype(flat_out.dtype), anchors) * mask
    valid = (target[..., 2] > target[..., 0]) & (target[..., 3] > target[..., 1])
    keep = valid[..., None].astype(flat_out.dtype)
    iou = _iou_terms(pred * keep, target * keep, iou_loss_type)
    result['box_iou_loss'] = jnp.sum(jnp.where(valid, 1 - iou, 0.0)) / (normalizer * 4.0)
    result['loss'] = result['loss'] + iou_loss_weight * result['box_iou_loss']
  return result
