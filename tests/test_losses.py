"""Focal, Huber and IoU-family losses with the official normalization."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effdet_jax.detection import box_coder, losses
from effdet_jax.detection.target_assigner import BACKGROUND, IGNORED
from effdet_jax.runtime import cpu_kernels

KW = dict(num_classes=3, alpha=0.25, gamma=1.5, delta=0.1, box_loss_weight=50.0)


def test_focal_loss_values():
  # logit 0, positive: p_t = 0.5 -> 0.25 * 0.5**1.5 * log 2; negative: 0.75 * 0.5**1.5 * log 2.
  out = losses.focal_loss(jnp.zeros(2), jnp.array([1.0, 0.0]), 0.25, 1.5)
  np.testing.assert_allclose(out, [0.25 * 0.5 ** 1.5 * np.log(2), 0.75 * 0.5 ** 1.5 * np.log(2)],
                             rtol=1e-5)
  # Confident and right costs almost nothing; confident and wrong costs a lot; no overflow.
  big = losses.focal_loss(jnp.array([30.0, -30.0]), jnp.array([1.0, 1.0]), 0.25, 1.5)
  assert float(big[0]) < 1e-12 and 5 < float(big[1]) < 10



def _plain_focal(logits, targets, alpha, gamma, label_smoothing):
  """The official formula as written, differentiated by JAX."""
  prob = jax.nn.sigmoid(logits)
  p_t = targets * prob + (1 - targets) * (1 - prob)
  alpha_factor = targets * alpha + (1 - targets) * (1 - alpha)
  smoothed = targets * (1 - label_smoothing) + 0.5 * label_smoothing
  ce = jnp.maximum(logits, 0) - logits * smoothed + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return alpha_factor * (1 - p_t) ** gamma * ce


@pytest.mark.parametrize('gamma,label_smoothing', [(1.5, 0.0), (2.0, 0.1), (0.0, 0.0), (1.7, 0.0),
                                                   (0.5, 0.05)])
def test_focal_loss_gradient_matches_autodiff(gamma, label_smoothing):
  logits = jnp.linspace(-12, 12, 96).reshape(1, 96) * jnp.ones((2, 1))   # no kink at 0
  targets = jnp.stack([jnp.zeros(96), jnp.ones(96)])
  weights = jax.random.uniform(jax.random.PRNGKey(0), logits.shape)
  def total(fn):
    return lambda x: jnp.sum(fn(x, targets, 0.25, gamma, label_smoothing) * weights)
  value, grad = jax.value_and_grad(total(losses.focal_loss))(logits)
  plain_value, plain_grad = jax.value_and_grad(total(_plain_focal))(logits)
  np.testing.assert_allclose(value, plain_value, rtol=1e-5)
  np.testing.assert_allclose(grad, plain_grad, rtol=1e-4, atol=1e-6)

@pytest.mark.parametrize('gamma,label_smoothing', [(1.5, 0.0), (2.0, 0.1), (0.0, 0.0), (1.7, 0.0),
                                                   (0.5, 0.05)])
def test_cpu_kernel_class_loss_matches_xla(gamma, label_smoothing):
  """The CPU kernel's loss sum and gradient equal the XLA formulation's, ignored
  anchors included, for the shortcut gammas (1.5, 2) and the general one."""
  assert cpu_kernels.targets() is not None, 'the CPU kernels did not build'
  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4, 2, 7)) * 5
  logits = logits.at[0, 0, 0, 0, :4].set(jnp.array([40.0, -40.0, 100.0, 0.0]))
  targets = jax.random.randint(jax.random.PRNGKey(1), (3, 5, 4, 2), 0, 7)
  targets = jnp.where(jax.random.uniform(jax.random.PRNGKey(2), targets.shape) < 0.5, BACKGROUND,
                      targets).at[1, 1].set(IGNORED)
  def value_and_grad(fn):
    return jax.jit(jax.value_and_grad(lambda x: fn(x, targets, 0.25, gamma, label_smoothing)))(logits)
  value, grad = value_and_grad(losses.class_loss_sum)
  xla_value, xla_grad = value_and_grad(losses._xla_class_loss_sum)
  np.testing.assert_allclose(value, xla_value, rtol=1e-5)
  np.testing.assert_allclose(grad, xla_grad, rtol=1e-4, atol=1e-6)
  assert not np.any(np.asarray(grad[1, 1])), 'ignored anchors carry gradient'


def test_huber_loss_regions():
  np.testing.assert_allclose(losses.huber_loss(jnp.array([0.05, 0.3]), 0.0, 0.1),
                             [0.5 * 0.05 ** 2, 0.1 * 0.3 - 0.5 * 0.1 ** 2], rtol=1e-6)


def test_huber_delta_in_float64_is_tfs_float32_constant():
  """Keras' Huber casts delta with `tf.cast`, which makes a float32 tensor of a
  Python float first: in a float64 run the official's delta 0.1 is float32(0.1)."""
  delta = np.float64(np.float32(0.1))
  with jax.enable_x64(True):
    errors = jnp.asarray([0.05, 0.3, -2.0], jnp.float64)
    got = losses.huber_loss(errors, 0.0, 0.1)
  assert got.dtype == jnp.float64
  want = np.where(np.abs(errors) <= delta, 0.5 * np.square(errors),
                  delta * np.abs(errors) - 0.5 * delta ** 2)
  np.testing.assert_allclose(got, want, rtol=1e-15)
  assert abs(float(got[2]) - (0.1 * 2.0 - 0.5 * 0.01)) > 1e-9


def level(values, shape):
  return jnp.asarray(values, jnp.float32).reshape(shape)


def test_detection_loss_normalization_masks_and_ignored():
  # One level, batch 2, 1x2 locations, 1 anchor, 3 classes.
  logits = level(np.linspace(-2, 2, 12), (2, 1, 2, 3))
  cls_t = jnp.array([[[[1], [-1]]], [[[-2], [0]]]], jnp.int32)
  box_out = level(np.linspace(-0.3, 0.3, 16), (2, 1, 2, 4))
  box_t = jnp.zeros((2, 1, 2, 4)).at[0, 0, 0].set(jnp.array([0.2, 0.0, -0.1, 0.05]))
  num_pos = jnp.array([1.0, 1.0])
  out = losses.detection_loss([logits], [box_out], [cls_t], [box_t], num_pos, **KW)
  onehot = jax.nn.one_hot(cls_t, 3)
  focal = losses.focal_loss(logits.reshape(2, 1, 2, 1, 3), onehot, 0.25, 1.5)
  focal = focal.at[1, 0, 0].set(0.0)          # the ignored anchor
  np.testing.assert_allclose(out['cls_loss'], focal.sum() / 3.0, rtol=1e-5)
  mask = box_t != 0
  huber = losses.huber_loss(box_out, box_t, 0.1) * mask
  np.testing.assert_allclose(out['box_loss'], huber.sum() / 12.0, rtol=1e-5)
  np.testing.assert_allclose(out['loss'], out['cls_loss'] + 50 * out['box_loss'], rtol=1e-6)


def test_batch_without_objects_gives_finite_loss():
  logits = jnp.zeros((2, 2, 2, 9 * 3))
  out = losses.detection_loss([logits], [jnp.zeros((2, 2, 2, 36))],
                              [jnp.full((2, 2, 2, 9), -1, jnp.int32)], [jnp.zeros((2, 2, 2, 36))],
                              jnp.zeros(2), iou_loss_type='ciou', anchors=jnp.ones((36, 4)), **KW)
  assert all(np.isfinite(float(v)) for v in out.values())
  assert float(out['box_loss']) == 0.0 and float(out['box_iou_loss']) == 0.0


def test_iou_loss_masks_decoded_coordinates_as_the_official():
  """tf2/train_lib.py's BoxIouLoss multiplies the decoded boxes by `target != 0`
  coordinate by coordinate and counts an anchor where the masked target box is
  non-empty; so an exact 0 in an encoded target zeroes that index of both boxes."""
  half = float(np.log(0.5))
  anchors = jnp.array([[0.0, 0.0, 40.0, 40.0]] * 2)
  # Anchor 1: ty = 0, target [10, 20, 30, 40] -> [0, 20, 30, 40], prediction
  # [20, 20, 40, 40] -> [0, 20, 40, 40]: GIoU 600 / 800 = 0.75 (unmasked: 1/3).
  # Anchor 2: th = 0 zeroes the target's ymax: an empty box, not counted.
  targets = jnp.array([[0.0, 0.25, half, half, 0.25, 0.25, 0.0, half]]).reshape(1, 1, 1, 8)
  outputs = jnp.array([[0.25, 0.25, half, half, 0.5, 0.5, 0.3, 0.3]]).reshape(1, 1, 1, 8)
  out = losses.detection_loss([jnp.zeros((1, 1, 1, 6))], [outputs],
                              [jnp.zeros((1, 1, 1, 2), jnp.int32)], [targets], jnp.array([2.0]),
                              iou_loss_type='giou', anchors=anchors, **KW)
  np.testing.assert_allclose(out['box_iou_loss'], (1 - 0.75) / (3 * 4), rtol=1e-5)


def test_iou_loss_pairs_rows_and_anchors_in_the_official_order():
  """The official concatenates each level's `[B*H*W*A, 4]` rows level by level and
  decodes them with the anchors tiled image by image, so past the first image's
  first level a row meets another anchor. Two levels (1x2 and 1x1), two images."""
  rng = np.random.default_rng(0)
  anchors = jnp.array([[0.0, 0.0, 40.0, 40.0], [0.0, 40.0, 40.0, 80.0], [0.0, 0.0, 80.0, 80.0]])
  shapes = [(2, 1, 2, 4), (2, 1, 1, 4)]
  outputs = [jnp.asarray(rng.normal(0, 0.3, s), jnp.float32) for s in shapes]
  targets = [jnp.asarray(rng.normal(0, 0.3, s), jnp.float32) for s in shapes]
  targets[0] = targets[0].at[1, 0, 1, 1].set(0.0)   # tx = 0: that row's xmin is zeroed
  rows = [(level, image, x) for level in range(2) for image in range(2)
          for x in range(shapes[level][2])]
  expected = 0.0
  for row, (level, image, x) in enumerate(rows):
    anchor = anchors[row % 3][None]
    out, tgt = outputs[level][image, 0, x][None], targets[level][image, 0, x][None]
    mask = (tgt != 0).astype(jnp.float32)
    pred = box_coder.decode(out, anchor) * mask
    target = box_coder.decode(tgt, anchor) * mask
    expected += 1 - float(losses._iou_terms(pred, target, 'giou')[0])
  kw = dict(KW, num_classes=1, iou_loss_type='giou', anchors=anchors)
  cls = [jnp.zeros(s[:3] + (1,)) for s in shapes]
  cls_t = [jnp.zeros(s[:3] + (1,), jnp.int32) for s in shapes]
  official = losses.detection_loss(cls, outputs, cls_t, targets, jnp.array([1.0, 1.0]), **kw)
  own = losses.detection_loss(cls, outputs, cls_t, targets, jnp.array([1.0, 1.0]),
                              iou_official_anchor_order=False, **kw)
  np.testing.assert_allclose(official['box_iou_loss'], expected / (3 * 4), rtol=1e-5)
  assert abs(float(own['box_iou_loss']) / float(official['box_iou_loss']) - 1) > 1e-3


@pytest.mark.parametrize('iou_type', losses.IOU_TYPES)
def test_iou_losses(iou_type):
  box = jnp.array([[10.0, 10.0, 50.0, 30.0]])
  assert float(losses._iou_terms(box, box, iou_type)[0]) == pytest.approx(1.0, abs=1e-6)
  shifted = box + jnp.array([5.0, 0.0, 5.0, 0.0])
  value = float(losses._iou_terms(shifted, box, iou_type)[0])
  iou = 35 * 20 / (2 * 800 - 35 * 20)
  expected = {'iou': iou, 'giou': iou - (45 * 20 - 900) / (45 * 20),
              'diou': iou - 25 / (45 ** 2 + 20 ** 2), 'ciou': iou - 25 / (45 ** 2 + 20 ** 2)}
  assert value == pytest.approx(expected[iou_type], rel=1e-5)
  far = box + 100.0
  assert float(losses._iou_terms(far, box, iou_type)[0]) <= 0.0 + 1e-7
  grad = jax.grad(lambda p: losses._iou_terms(p, box * jnp.array([1, 1, 1.2, 0.9]),
                                              iou_type).sum())(shifted)
  assert np.isfinite(grad).all()


# The official `iou_utils.iou_loss` (automl 6a54c87, TF 2.15.1, in a tf.function as
# the train step runs it, float64) on the two pairs of PRED and TARGET: the summed
# loss and its gradient with respect to PRED.
PRED = [[10., 12., 50., 38.], [5., 5., 20., 40.]]
TARGET = [[12., 10., 48., 44.], [6., 2., 25., 30.]]
OFFICIAL_IOU_LOSSES = {
    'iou': (0.8001312179410712, [-0.013799172593990418, 0.02498548410509508,
                                 0.013799172593990418, -0.02498548410509508,
                                 -0.024507401235173025, 0.019101768734157712,
                                 -0.028358564286414492, 0.010503171957931295]),
    'giou': (0.8933974718110401, [-0.019093290241049242, 0.02792666057568332,
                                  0.019093290241049242, -0.02792666057568332,
                                  -0.024967927550962495, 0.020417558207841927,
                                  -0.041516459023256604, 0.015246939270950687]),
    'diou': (0.8293754383995305, [-0.01375704258499566, 0.024259794700160393,
                                  0.01375704258499566, -0.02571117351002977,
                                  -0.025531417685312068, 0.022626714504222788,
                                  -0.029985462334136834, 0.012882642692588106]),
    'ciou': (0.8303635908258343, [-0.013731765863097984, 0.024214027381221404,
                                  0.013731765863097984, -0.02566540619109078,
                                  -0.025511460478349582, 0.02261115928691032,
                                  -0.02996236899465168, 0.012874089603889898]),
}


@pytest.mark.parametrize('iou_type', losses.IOU_TYPES)
def test_iou_family_loss_and_gradient_are_the_officials(iou_type):
  """CIoU included, whose official gradient is not the paper's (losses._iou_terms)."""
  with jax.enable_x64(True):
    loss, grad = jax.value_and_grad(lambda p: jnp.sum(1 - losses._iou_terms(
        p, jnp.asarray(TARGET, jnp.float64), iou_type)))(jnp.asarray(PRED, jnp.float64))
    want_loss, want_grad = OFFICIAL_IOU_LOSSES[iou_type]
    assert float(loss) == pytest.approx(want_loss, rel=1e-14)
    np.testing.assert_allclose(np.asarray(grad).ravel(), want_grad, rtol=1e-12, atol=1e-16)


def test_iou_loss_term_uses_decoded_boxes():
  anchors = jnp.array([[0.0, 0.0, 32.0, 32.0]] * 9)
  target_box = jnp.array([[2.0, 3.0, 30.0, 36.0]])
  enc = box_coder.encode(target_box, anchors[:1])
  box_t = jnp.zeros((1, 1, 1, 36)).at[0, 0, 0, :4].set(enc[0])
  kw = dict(KW, iou_loss_type='giou', anchors=anchors)
  cls = [jnp.zeros((1, 1, 1, 27))]
  tgt = [jnp.full((1, 1, 1, 9), -1, jnp.int32)]
  perfect = losses.detection_loss(cls, [box_t], tgt, [box_t], jnp.array([1.0]), **kw)
  assert float(perfect['box_iou_loss']) == pytest.approx(0.0, abs=1e-5)
  off = losses.detection_loss(cls, [box_t * 0], tgt, [box_t], jnp.array([1.0]), **kw)
  assert float(off['box_iou_loss']) > 0.0
  with pytest.raises(ValueError, match='iou_loss_type'):
    losses.detection_loss(cls, [box_t], tgt, [box_t], jnp.array([1.0]),
                          **dict(kw, iou_loss_type='eiou'))
