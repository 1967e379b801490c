"""Boxes <-> regression targets `(ty, tx, th, tw)` relative to anchors (the
official Faster R-CNN coding without scale factors)."""
import jax
import jax.numpy as jnp
import numpy as np

# Encoding guards divisions and logs as the official coder does (sizes at least this).
EPSILON = 1e-8
# Decoding clamps th, tw so exp() stays finite: e^20 times any anchor is far
# outside every image (boxes are clipped afterwards), so sane predictions decode
# exactly as the official decoder does.
MAX_LOG_SCALE = 20.0


# Eigen's float32 `plog` (what TF's CPU kernels run for `tf.math.log`): log(2^e m)
# = e ln2 + log1p(x), x = m - 1 with m in [sqrt(1/2), sqrt(2)), log1p(x) as the
# rational x P(x) / Q(x) below, each step rounded to float32, no fused multiply-adds.
_SQRT_HALF = np.float32(0.707106781186547524)
_LOG_P = tuple(np.float32(c) for c in (0.18256296349849254, 1.0000000190281063, 1.0000000190281136))
_LOG_Q = tuple(np.float32(c) for c in (0.049616247954120038, 0.59923249590823520,
                                       1.4999999999999927, 1.0))
_LN2 = np.float32(0.693147180559945309)


def tf_log(x: jnp.ndarray) -> jnp.ndarray:
  """log of positive, finite float32 values rounded as TF's CPU `log` rounds them.

  The official computes its box targets in the input pipeline on the host's CPU,
  so their th, tw are this function's values; XLA's `log` differs from it by an
  ulp on ~14% of inputs (docs/parity.md: what that does to training). Bit-equal
  to TF's vectorized kernel on XLA:CPU (tests/test_anchors_box_coder.py); other
  backends may round their divisions otherwise.
  """
  x = x.astype(jnp.float32)
  # XLA contracts a * b + c into one fused multiply-add, rounded once; TF rounds
  # the product first. An integer zero XLA cannot prove is zero (x > 0: its sign
  # bit), added to the product's bits, keeps the product a float32 number.
  zero = jax.lax.shift_right_arithmetic(jax.lax.bitcast_convert_type(x, jnp.int32),
                                          np.int32(31))
  def mul(a, b):
    product = jax.lax.bitcast_convert_type(a * b, jnp.int32) + zero
    return jax.lax.bitcast_convert_type(product, jnp.float32)

  mantissa, exponent = jnp.frexp(x)
  low = mantissa < _SQRT_HALF
  t = (mantissa - 1) + jnp.where(low, mantissa, 0)
  exponent = exponent.astype(jnp.float32) - low.astype(jnp.float32)
  p = mul(mul(_LOG_P[0], t) + _LOG_P[1], t) + _LOG_P[2]
  q = mul(mul(mul(_LOG_Q[0], t) + _LOG_Q[1], t) + _LOG_Q[2], t) + _LOG_Q[3]
  return mul(exponent, _LN2) + t * p / q


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
  return jnp.stack([(yc - yca) / ha, (xc - xca) / wa, tf_log(h / ha), tf_log(w / wa)], axis=-1)


def decode(targets: jnp.ndarray, anchors: jnp.ndarray) -> jnp.ndarray:
  """`[..., 4]` targets `(ty, tx, th, tw)` -> boxes `[ymin, xmin, ymax, xmax]`."""
  yca, xca, ha, wa = _center_size(anchors.astype(targets.dtype))
  ty, tx, th, tw = jnp.moveaxis(targets, -1, 0)
  h = jnp.exp(jnp.minimum(th, MAX_LOG_SCALE)) * ha
  w = jnp.exp(jnp.minimum(tw, MAX_LOG_SCALE)) * wa
  yc = ty * ha + yca
  xc = tx * wa + xca
  return jnp.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)
