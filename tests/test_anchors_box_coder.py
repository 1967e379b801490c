"""Anchors in the official order and the official box coding."""
from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from effdet_jax.configs.efficientdet import get_config
from effdet_jax.detection import anchors, box_coder


def test_d0_anchor_count_order_and_first_boxes():
  boxes = anchors.anchors_for(get_config('d0'))
  assert boxes.shape == (sum((512 // 2 ** l) ** 2 for l in range(3, 8)) * 9, 4) == (49104, 4)
  # First location of level 3 (stride 8, centre 4, 4), octave 0, aspect 1.0: a 32x32 box.
  np.testing.assert_allclose(boxes[0], [-12, -12, 20, 20])
  # Aspect 2.0 is wider than tall; the next octave is 2**(1/3) larger.
  h, w = boxes[1, 2] - boxes[1, 0], boxes[1, 3] - boxes[1, 1]
  np.testing.assert_allclose([w / h, w * h], [2.0, 32 * 32], rtol=1e-5)
  np.testing.assert_allclose(boxes[3, 2] - boxes[3, 0], 32 * 2 ** (1 / 3), rtol=1e-5)
  # Anchor 9 is the next column of level 3; level 4 starts after 64*64*9 anchors.
  np.testing.assert_allclose(boxes[9], boxes[0] + [0, 8, 0, 8])
  np.testing.assert_allclose(boxes[64 * 64 * 9], [-24, -24, 40, 40])


def test_non_square_inputs_and_anchor_scale():
  boxes = anchors.generate_anchors((256, 384), 3, 7, 3, (1.0, 2.0, 0.5), 5.0)
  assert len(boxes) == sum((256 // 2 ** l) * (384 // 2 ** l) for l in range(3, 8)) * 9
  np.testing.assert_allclose(boxes[0], [4 - 20, 4 - 20, 4 + 20, 4 + 20])
  assert anchors.feature_sizes((640, 384), 8)[8] == (3, 2)


def test_encode_of_anchor_is_zero_and_official_formula():
  a = jnp.array([[10.0, 20.0, 50.0, 40.0]])
  np.testing.assert_allclose(box_coder.encode(a, a), 0.0, atol=1e-6)
  b = jnp.array([[20.0, 20.0, 60.0, 60.0]])
  np.testing.assert_allclose(box_coder.encode(b, a)[0],
                             [(40 - 30) / 40, (40 - 30) / 20, np.log(40 / 40), np.log(40 / 20)],
                             rtol=1e-5)


coords = st.floats(-500, 1500, allow_nan=False, width=32)
sizes = st.floats(1, 800, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(coords, coords, sizes, sizes, coords, coords, sizes, sizes)
def test_encode_decode_round_trip(y, x, h, w, ay, ax, ah, aw):
  box = jnp.array([[y, x, y + h, x + w]], jnp.float32)
  anchor = jnp.array([[ay, ax, ay + ah, ax + aw]], jnp.float32)
  decoded = box_coder.decode(box_coder.encode(box, anchor), anchor)
  np.testing.assert_allclose(decoded, box, atol=1e-2, rtol=1e-4)


def test_decode_survives_huge_scales():
  anchor = jnp.array([[0.0, 0.0, 32.0, 32.0]])
  out = box_coder.decode(jnp.array([[0.0, 0.0, 1e4, 1e4]]), anchor)
  assert np.isfinite(out).all()


def _tf_log(x):
  """TF's CPU `log`, its vectorized kernel: padded to a multiple of 16 floats
  (the last partial packet goes another path)."""
  flat = np.asarray(x, np.float32).ravel()
  padded = np.concatenate([flat, np.ones(-len(flat) % 16, np.float32)])
  return tf.math.log(tf.constant(padded)).numpy()[:len(flat)].reshape(np.shape(x))


def test_log_rounds_as_tf():
  """The box targets' log is TF's to the bit (XLA's differs on ~14% of inputs),
  eager and under jit (where XLA would fuse the multiply-adds), in 64-bit mode too."""
  x = np.exp(np.random.default_rng(0).uniform(-20, 20, 1 << 16)).astype(np.float32)
  want = _tf_log(x)
  assert np.mean(np.asarray(jax.jit(jnp.log)(x)) != want) > 0.05
  np.testing.assert_array_equal(box_coder.tf_log(jnp.asarray(x)), want)
  np.testing.assert_array_equal(jax.jit(box_coder.tf_log)(x), want)
  with jax.enable_x64(True):
    got = jax.jit(box_coder.tf_log)(x)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, want)


def _official_encode(boxes, anchors):
  """The official FasterRcnnBoxCoder in IEEE float32 (numpy: no fused or
  reciprocal tricks; the log is TF's)."""
  def center_size(b):
    h, w = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return b[..., 0] + h / np.float32(2), b[..., 1] + w / np.float32(2), h, w
  yc, xc, h, w = center_size(boxes)
  yca, xca, ha, wa = center_size(anchors)
  return np.stack([(yc - yca) / ha, (xc - xca) / wa, _tf_log(h / ha), _tf_log(w / wa)], -1)


def test_encode_rounds_as_the_official_under_jit_and_vmap():
  """Division by a constant or broadcast operand is not rewritten into a reciprocal
  product (XLA does that, 1-2 ulp off) wherever the coder runs, and the log is TF's."""
  rng = np.random.default_rng(0)
  corner = rng.uniform(0, 200, (3, 500, 2)).astype(np.float32)
  boxes = np.concatenate([corner, corner + rng.uniform(1, 100, (3, 500, 2)).astype(np.float32)], -1)
  anchor_set = jnp.asarray(anchors.anchors_for(get_config('d0'))[:500])
  want = _official_encode(boxes, np.asarray(anchor_set))
  as_constant = jax.jit(lambda b: box_coder.encode(b, anchor_set))(boxes)
  batched = jax.jit(jax.vmap(box_coder.encode))(
      boxes, jnp.broadcast_to(anchor_set, (3,) + anchor_set.shape))
  for got in (as_constant, batched):
    np.testing.assert_array_equal(np.asarray(got), want)
