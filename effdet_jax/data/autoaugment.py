"""AutoAugment for detection (policies `v0`-`v3`) and RandAugment, as the official
input pipeline applies them (`data.autoaugment_policy`; google/automl
`aug/autoaugment.py`), with stateless randomness and boxes in pixels. The
operations are in image_ops.py.

AutoAugment: one sub-policy per image, uniformly; each of its (operation,
probability, level) steps applied with its probability, except the
`*_Only_BBoxes` ones, which always run and apply their operation inside each
box with a third of it. `v0` is the policy of the paper (Zoph et al. 2019).

RandAugment (`distort_image_with_randaugment(num_layers=1, magnitude=15)`):
one of ten operations, uniformly, always applied (the official draws a
probability per operation and does not use it). At magnitude 15 of the
official scale's 10: rotate by 45 degrees, shear by 0.45, translate by 375
pixels (each sign at random), color factor 2.8, cutout of a 300-pixel square,
solarize-add 165 below 128, and solarize at threshold 384, which changes no
uint8 pixel (as in the official).
"""
from typing import Tuple

import tensorflow as tf

from effdet_jax.data import image_ops

MAX_LEVEL = 10.0
# The official augmentation hparams (both methods).
CUTOUT_CONST = 100
TRANSLATE_CONST = 250
CUTOUT_BOX_CONST = 50
TRANSLATE_BOX_CONST = 120
CUTOUT_MAX_PAD_FRACTION = 0.75
RANDAUG_MAGNITUDE = 15.0
RANDAUG_LAYERS = 1
RANDAUG_OPS = ('Equalize', 'Solarize', 'Color', 'Cutout', 'SolarizeAdd', 'TranslateX_BBox',
               'TranslateY_BBox', 'ShearX_BBox', 'ShearY_BBox', 'Rotate_BBox')

# The official policies: sub-policies of (operation, probability, level).
POLICY_V0 = (
    (('TranslateX_BBox', 0.6, 4), ('Equalize', 0.8, 10)),
    (('TranslateY_Only_BBoxes', 0.2, 2), ('Cutout', 0.8, 8)),
    (('Sharpness', 0.0, 8), ('ShearX_BBox', 0.4, 0)),
    (('ShearY_BBox', 1.0, 2), ('TranslateY_Only_BBoxes', 0.6, 6)),
    (('Rotate_BBox', 0.6, 10), ('Color', 1.0, 6)),
)
POLICY_V1 = POLICY_V0 + (
    (('Color', 0.0, 0), ('ShearX_Only_BBoxes', 0.8, 4)),
    (('ShearY_Only_BBoxes', 0.8, 2), ('Flip_Only_BBoxes', 0.0, 10)),
    (('Equalize', 0.6, 10), ('TranslateX_BBox', 0.2, 2)),
    (('Color', 1.0, 10), ('TranslateY_Only_BBoxes', 0.4, 6)),
    (('Rotate_BBox', 0.8, 10), ('Contrast', 0.0, 10)),
    (('Cutout', 0.2, 2), ('Brightness', 0.8, 10)),
    (('Color', 1.0, 6), ('Equalize', 1.0, 2)),
    (('Cutout_Only_BBoxes', 0.4, 6), ('TranslateY_Only_BBoxes', 0.8, 2)),
    (('Color', 0.2, 8), ('Rotate_BBox', 0.8, 10)),
    (('Sharpness', 0.4, 4), ('TranslateY_Only_BBoxes', 0.0, 4)),
    (('Sharpness', 1.0, 4), ('SolarizeAdd', 0.4, 4)),
    (('Rotate_BBox', 1.0, 8), ('Sharpness', 0.2, 8)),
    (('ShearY_BBox', 0.6, 10), ('Equalize_Only_BBoxes', 0.6, 8)),
    (('ShearX_BBox', 0.2, 6), ('TranslateY_Only_BBoxes', 0.2, 10)),
    (('SolarizeAdd', 0.6, 8), ('Brightness', 0.8, 10)),
)
POLICY_V2 = (
    (('Color', 0.0, 6), ('Cutout', 0.6, 8), ('Sharpness', 0.4, 8)),
    (('Rotate_BBox', 0.4, 8), ('Sharpness', 0.4, 2), ('Rotate_BBox', 0.8, 10)),
    (('TranslateY_BBox', 1.0, 8), ('AutoContrast', 0.8, 2)),
    (('AutoContrast', 0.4, 6), ('ShearX_BBox', 0.8, 8), ('Brightness', 0.0, 10)),
    (('SolarizeAdd', 0.2, 6), ('Contrast', 0.0, 10), ('AutoContrast', 0.6, 0)),
    (('Cutout', 0.2, 0), ('Solarize', 0.8, 8), ('Color', 1.0, 4)),
    (('TranslateY_BBox', 0.0, 4), ('Equalize', 0.6, 8), ('Solarize', 0.0, 10)),
    (('TranslateY_BBox', 0.2, 2), ('ShearY_BBox', 0.8, 8), ('Rotate_BBox', 0.8, 8)),
    (('Cutout', 0.8, 8), ('Brightness', 0.8, 8), ('Cutout', 0.2, 2)),
    (('Color', 0.8, 4), ('TranslateY_BBox', 1.0, 6), ('Rotate_BBox', 0.6, 6)),
    (('Rotate_BBox', 0.6, 10), ('BBox_Cutout', 1.0, 4), ('Cutout', 0.2, 8)),
    (('Rotate_BBox', 0.0, 0), ('Equalize', 0.6, 6), ('ShearY_BBox', 0.6, 8)),
    (('Brightness', 0.8, 8), ('AutoContrast', 0.4, 2), ('Brightness', 0.2, 2)),
    (('TranslateY_BBox', 0.4, 8), ('Solarize', 0.4, 6), ('SolarizeAdd', 0.2, 10)),
    (('Contrast', 1.0, 10), ('SolarizeAdd', 0.2, 8), ('Equalize', 0.2, 4)),
)
POLICY_V3 = (
    (('Posterize', 0.8, 2), ('TranslateX_BBox', 1.0, 8)),
    (('BBox_Cutout', 0.2, 10), ('Sharpness', 1.0, 8)),
    (('Rotate_BBox', 0.6, 8), ('Rotate_BBox', 0.8, 10)),
    (('Equalize', 0.8, 10), ('AutoContrast', 0.2, 10)),
    (('SolarizeAdd', 0.2, 2), ('TranslateY_BBox', 0.2, 8)),
    (('Sharpness', 0.0, 2), ('Color', 0.4, 8)),
    (('Equalize', 1.0, 8), ('TranslateY_BBox', 1.0, 8)),
    (('Posterize', 0.6, 2), ('Rotate_BBox', 0.0, 10)),
    (('AutoContrast', 0.6, 0), ('Rotate_BBox', 1.0, 6)),
    (('Equalize', 0.0, 4), ('Cutout', 0.8, 10)),
    (('Brightness', 1.0, 2), ('TranslateY_BBox', 1.0, 6)),
    (('Contrast', 0.0, 2), ('ShearY_BBox', 0.8, 0)),
    (('AutoContrast', 0.8, 10), ('Contrast', 0.2, 10)),
    (('Rotate_BBox', 1.0, 10), ('Cutout', 1.0, 10)),
    (('SolarizeAdd', 0.8, 6), ('Equalize', 0.8, 8)),
)
AUTOAUGMENT_POLICIES = {'v0': POLICY_V0, 'v1': POLICY_V1, 'v2': POLICY_V2, 'v3': POLICY_V3}
POLICIES = ('',) + tuple(AUTOAUGMENT_POLICIES) + ('randaug',)


def check_policy(policy: str) -> str:
  if policy not in POLICIES:
    raise ValueError(f'config.data.autoaugment_policy must be one of {POLICIES}, got {policy!r}')
  return policy


def _signed(value: float, seed: tf.Tensor) -> tf.Tensor:
  """`value` or `-value`, each with probability 1/2 (the official `_randomly_negate_tensor`)."""
  return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -value, value)


def apply_op(name: str, image, boxes, level: float, prob: float,
             seed) -> Tuple[tf.Tensor, tf.Tensor]:
  """Operation `name` at `level` (official scale 0..10), the official level-to-argument
  rules; `prob` is used by the `*_Only_BBoxes` operations only (a third of it per box)."""
  x = level / MAX_LEVEL
  enhance = x * 1.8 + 0.1
  seeds = tf.random.experimental.stateless_split(seed, 2)
  colour = {
      'AutoContrast': lambda: image_ops.autocontrast(image),
      'Equalize': lambda: image_ops.equalize(image),
      'Posterize': lambda: image_ops.posterize(image, int(x * 4)),
      'Solarize': lambda: image_ops.solarize(image, int(x * 256)),
      'SolarizeAdd': lambda: image_ops.solarize_add(image, int(x * 110)),
      'Color': lambda: image_ops.color(image, enhance),
      'Contrast': lambda: image_ops.contrast(image, enhance),
      'Brightness': lambda: image_ops.brightness(image, enhance),
      'Sharpness': lambda: image_ops.sharpness(image, enhance),
      'Cutout': lambda: image_ops.cutout(image, int(x * CUTOUT_CONST), seeds[0]),
  }
  if name in colour:
    return colour[name](), boxes
  if name == 'BBox_Cutout':
    return image_ops.box_cutout(image, boxes, x * CUTOUT_MAX_PAD_FRACTION, seeds[0])
  if name in ('TranslateX_BBox', 'TranslateY_BBox'):
    return image_ops.translate(image, boxes, _signed(x * TRANSLATE_CONST, seeds[0]),
                               horizontal=name == 'TranslateX_BBox')
  if name in ('ShearX_BBox', 'ShearY_BBox'):
    return image_ops.shear(image, boxes, _signed(x * 0.3, seeds[0]),
                           horizontal=name == 'ShearX_BBox')
  if name == 'Rotate_BBox':
    return image_ops.rotate(image, boxes, _signed(x * 30.0, seeds[0]))
  inside = {
      'TranslateX_Only_BBoxes': lambda p, s: image_ops.warp(p, image_ops.translate_inverse(
          _signed(x * TRANSLATE_BOX_CONST, s), True)),
      'TranslateY_Only_BBoxes': lambda p, s: image_ops.warp(p, image_ops.translate_inverse(
          _signed(x * TRANSLATE_BOX_CONST, s), False)),
      'ShearX_Only_BBoxes': lambda p, s: image_ops.warp(p, image_ops.shear_inverse(
          _signed(x * 0.3, s), True)),
      'ShearY_Only_BBoxes': lambda p, s: image_ops.warp(p, image_ops.shear_inverse(
          _signed(x * 0.3, s), False)),
      'Rotate_Only_BBoxes': lambda p, s: image_ops.warp(p, image_ops.rotate_inverse(
          _signed(x * 30.0, s), tf.shape(p)[:2])),
      'Flip_Only_BBoxes': lambda p, s: p[:, ::-1],
      'Solarize_Only_BBoxes': lambda p, s: image_ops.solarize(p, int(x * 256)),
      'Equalize_Only_BBoxes': lambda p, s: image_ops.equalize(p),
      'Cutout_Only_BBoxes': lambda p, s: image_ops.cutout(p, int(x * CUTOUT_BOX_CONST), s),
  }
  if name not in inside:
    raise ValueError(f'unknown augmentation operation {name!r}')
  return image_ops.inside_boxes(image, boxes, prob / 3.0, inside[name], seeds[1])


def autoaugment(pixels: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor,
                policy: str) -> Tuple[tf.Tensor, tf.Tensor]:
  """uint8 `[h, w, 3]` and `[N, 4]` pixel boxes through one random sub-policy."""
  sub_policies = AUTOAUGMENT_POLICIES[policy]
  seeds = tf.random.experimental.stateless_split(seed, 2)
  pick = tf.random.stateless_uniform([], seeds[0], 0, len(sub_policies), tf.int32)

  def run(steps):
    image, moved = pixels, boxes
    for k, (name, prob, level) in enumerate(steps):
      step = tf.random.experimental.stateless_split(
          tf.random.experimental.stateless_fold_in(seeds[1], k), 2)
      if name.endswith('_Only_BBoxes'):
        image, moved = apply_op(name, image, moved, level, prob, step[1])
      else:
        apply = tf.random.stateless_uniform([], step[0]) < prob
        image, moved = tf.cond(
            apply, lambda n=name, i=image, m=moved, s=step[1]: apply_op(n, i, m, level, prob, s),
            lambda i=image, m=moved: (i, m))
    return image, moved
  return tf.switch_case(pick, [lambda steps=steps: run(steps) for steps in sub_policies])


def randaugment(pixels: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor,
                num_layers: int = RANDAUG_LAYERS,
                magnitude: float = RANDAUG_MAGNITUDE) -> Tuple[tf.Tensor, tf.Tensor]:
  """uint8 `[h, w, 3]` and `[N, 4]` pixel boxes, each layer one random operation."""
  for layer in range(num_layers):
    seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, layer), 2)
    pick = tf.random.stateless_uniform([], seeds[0], 0, len(RANDAUG_OPS), tf.int32)
    branches = [lambda name=name: apply_op(name, pixels, boxes, magnitude, 1.0, seeds[1])
                for name in RANDAUG_OPS]
    pixels, boxes = tf.switch_case(pick, branches)
  return pixels, boxes


def augment(pixels: tf.Tensor, boxes: tf.Tensor, seed: tf.Tensor, policy: str):
  """`policy` ('v0'-'v3' or 'randaug') on one example."""
  if check_policy(policy) == 'randaug':
    return randaugment(pixels, boxes, seed)
  return autoaugment(pixels, boxes, seed, policy)
