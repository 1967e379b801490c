"""NMS / soft-NMS properties and the official post-processing path."""
from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effdet_jax.detection import postprocess
from effdet_jax.detection.boxes import pairwise_iou

KW = dict(iou_threshold=0.5, sigma=0.5, score_threshold=0.001, max_detections=8)
box = st.tuples(st.floats(0, 80), st.floats(0, 80), st.floats(2, 40), st.floats(2, 40)).map(
    lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]])
case = st.integers(2, 12).flatmap(lambda n: st.tuples(
    st.lists(box, min_size=n, max_size=n),
    st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n),
    st.lists(st.integers(0, 2), min_size=n, max_size=n)))

_nms = {key: jax.jit(lambda b, s, c, key=key: postprocess.nms(
    b, s, c, method=key[0], per_class=key[1], **KW))
        for key in [('hard', False), ('hard', True), ('gaussian', False), ('gaussian', True)]}


@settings(max_examples=40, deadline=None)
@given(case)
def test_hard_nms_keeps_no_overlapping_pair(data):
  boxes, scores, classes = (jnp.array(x, dt) for x, dt in zip(data, (jnp.float32, jnp.float32,
                                                                      jnp.int32)))
  idx, kept, count = _nms[('hard', False)](boxes, scores, classes)
  sel = np.asarray(idx[:int(count)])
  assert len(set(sel.tolist())) == len(sel)
  iou = np.array(pairwise_iou(boxes[sel], boxes[sel]))
  np.fill_diagonal(iou, 0)
  assert (iou <= 0.5 + 1e-6).all()
  np.testing.assert_allclose(kept[:int(count)], scores[sel])       # hard NMS keeps scores
  assert (np.diff(np.asarray(kept[:int(count)])) <= 0).all()
  # Everything above the threshold is either kept or overlaps a kept higher-scoring box.
  for i in range(len(scores)):
    if scores[i] > 0.001 and i not in sel and int(count) < 8:
      assert (np.asarray(pairwise_iou(boxes[i:i + 1], boxes[sel]))[0] > 0.5).any()


@settings(max_examples=40, deadline=None)
@given(case)
def test_soft_nms_scores_never_increase(data):
  boxes, scores, classes = (jnp.array(x, dt) for x, dt in zip(data, (jnp.float32, jnp.float32,
                                                                      jnp.int32)))
  for per_class in (False, True):
    idx, kept, count = _nms[('gaussian', per_class)](boxes, scores, classes)
    n = int(count)
    sel = np.asarray(idx[:n])
    assert len(set(sel.tolist())) == n
    assert (np.asarray(kept[:n]) <= np.asarray(scores)[sel] + 1e-7).all()
    assert (np.diff(np.asarray(kept[:n])) <= 1e-7).all()
    assert (np.asarray(kept[:n]) > 0.001).all() and (np.asarray(kept[n:]) == 0).all()


def test_soft_nms_decay_and_per_class_isolation():
  boxes = jnp.array([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], jnp.float32)
  scores = jnp.array([0.9, 0.8, 0.7])
  classes = jnp.array([0, 1, 0])
  idx, kept, count = postprocess.nms(boxes, scores, classes, method='gaussian',
                                     per_class=False, **KW)
  # The duplicate of the top box decays by exp(-1 / 0.5) and falls behind the third box.
  np.testing.assert_array_equal(idx[:3], [0, 2, 1])
  np.testing.assert_allclose(kept[:3], [0.9, 0.7, 0.8 * np.exp(-2.0)], rtol=1e-6)
  idx, kept, _ = postprocess.nms(boxes, scores, classes, method='gaussian', per_class=True, **KW)
  np.testing.assert_allclose(kept[:3], [0.9, 0.8, 0.7], rtol=1e-6)   # other class: untouched
  with pytest.raises(ValueError, match='nms_method'):
    postprocess.nms(boxes, scores, classes, method='linear', per_class=False, **KW)


def test_postprocess_clips_scales_and_pads():
  anchors = jnp.array([[0, 0, 16, 16], [8, 8, 40, 40]], jnp.float32)
  cls = [jnp.array([[[[3.0, -5.0], [-4.0, 2.0]]]]).reshape(1, 1, 2, 2)]   # 2 anchors, 2 classes
  box = [jnp.array([[[[0, 0, 0, 0], [0, 0, 1.0, 1.0]]]]).reshape(1, 1, 2, 4)]
  det = postprocess.postprocess(cls, box, anchors, jnp.array([2.0]), image_size=(32, 32),
                                num_classes=2, max_nms_inputs=0, max_detections=4)
  assert int(det.num_valid[0]) == 2
  np.testing.assert_array_equal(det.classes[0, :2], [0, 1])
  # Anchor 1 grows e-fold around (24, 24): clipped to the 32x32 input, then scaled x2.
  half = 32 * np.e / 2
  np.testing.assert_allclose(det.boxes[0, 1], np.array([24 - half, 24 - half, 32, 32]).clip(0) * 2,
                             rtol=1e-5)
  np.testing.assert_array_equal(det.boxes[0, 2:], 0.0)
  np.testing.assert_array_equal(det.scores[0, 2:], 0.0)


def test_postprocess_d0_outputs_shapes_and_jit():
  from effdet_jax.configs.efficientdet import get_config
  from effdet_jax.detection.anchors import anchors_for
  config = get_config('d0')
  anchors = jnp.asarray(anchors_for(config))
  keys = jax.random.split(jax.random.PRNGKey(0), 10)
  cls = [jax.random.normal(keys[i], (2, 512 // 2 ** l, 512 // 2 ** l, 810)) - 3
         for i, l in enumerate(range(3, 8))]
  box = [jax.random.normal(keys[5 + i], (2, 512 // 2 ** l, 512 // 2 ** l, 36)) * 0.1
         for i, l in enumerate(range(3, 8))]
  fn = jax.jit(lambda c, b: postprocess.postprocess(
      c, b, anchors, jnp.ones(2), image_size=(512, 512), num_classes=90, max_nms_inputs=5000,
      per_class=True))
  det = fn(cls, box)
  assert det.boxes.shape == (2, 100, 4) and det.classes.dtype == jnp.int32
  assert (np.asarray(det.num_valid) == 100).all()
  assert float(det.boxes.min()) >= 0 and float(det.boxes.max()) <= 512


def test_two_stage_top_k_equals_full_top_k():
  logits = jax.random.normal(jax.random.PRNGKey(3), (700, 7))
  boxes = jnp.zeros((700, 4))
  _, scores, classes = postprocess.candidates(logits, boxes, jnp.ones((700, 4)), 50)
  full_logits, full_idx = jax.lax.top_k(logits.reshape(-1), 50)
  np.testing.assert_allclose(scores, jax.nn.sigmoid(full_logits), rtol=1e-6)
  np.testing.assert_array_equal(classes, full_idx % 7)
