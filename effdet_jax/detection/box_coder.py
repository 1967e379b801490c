"""Boxes <-> regression targets `(ty, tx, th, tw)` relative to anchors (the
official Faster R-CNN coding without scale factors)."""
import jax
import jax.numpy as jnp

# Encoding guards divisions and logs as the official coder does (sizes at least this).
EPSILON = 1e-8
# Decoding clamps th, tw so exp() stays finite: e^20 times any anchor is far
# outside every image (boxes are clipped afterwards), so sane predictions decode
# exactly as the official decoder does.
MAX_LOG_SCALE = 20.0


def _center_size(boxes):
  ymin, xmin, ymax, xmax = jnp.moveaxis(boxes, -1, 0)
  return (ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin


def encode(boxes: jnp.ndarray, anchors: jnp.ndarray) -> jnp.ndarray:
  """`[..., 4]` boxes `[ymin, xmin, ymax, xmax]` -> `[..., 4]` targets `(ty, tx, th, tw)`.

  The official `FasterRcnnBoxCoder` arithmetic to the rounding: centres as
  `min + size / 2` (its decoder uses `(min + max) / 2`, as `decode` does)."""
  def center_size(b):
    ymin, xmin, ymax, xmax = jnp.moveaxis(b, -1, 0)
    h, w = ymax - ymin, xmax - xmin
    return ymin + h / 2, xmin + w / 2, jnp.maximum(h, EPSILON), jnp.maximum(w, EPSILON)

  # XLA rewrites a division by a broadcast (or constant) operand into a product
  # with its reciprocal, which rounds differently (targets 1-2 ulp off, th/tw ~1e-6
  # relative). Broadcast here and hidden behind the barrier, the anchors are a plain
  # operand. (Under vmap, pass the anchors batched: see target_assigner.batch_targets.)
  anchors = jax.lax.optimization_barrier(jnp.broadcast_to(anchors, boxes.shape))
  yc, xc, h, w = center_size(boxes)
  yca, xca, ha, wa = center_size(anchors)
  return jnp.stack([(yc - yca) / ha, (xc - xca) / wa, jnp.log(h / ha), jnp.log(w / wa)], axis=-1)


def decode(targets: jnp.ndarray, anchors: jnp.ndarray) -> jnp.ndarray:
  """`[..., 4]` targets `(ty, tx, th, tw)` -> boxes `[ymin, xmin, ymax, xmax]`."""
  yca, xca, ha, wa = _center_size(anchors.astype(targets.dtype))
  ty, tx, th, tw = jnp.moveaxis(targets, -1, 0)
  h = jnp.exp(jnp.minimum(th, MAX_LOG_SCALE)) * ha
  w = jnp.exp(jnp.minimum(tw, MAX_LOG_SCALE)) * wa
  yc = ty * ha + yca
  xc = tx * wa + xca
  return jnp.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)
