"""Makes this folder's reference files: the official TF2 train step
(google/automl `efficientdet/tf2/train_lib.py`, `EfficientDetNetTrain`) run in
float64 for three steps on one batch from a checkpoint, as
`../shared/parity/train-d0/` was made, with the official hparams overridden.

Not part of the suite: it runs beside an automl checkout with TF 2.15.1 and
tensorflow-addons 0.23 (README.md here has the commands). It reproduces
train-d0's meta.json to 1e-15 at step 1 (its losses) and 7e-9 at step 3.

Writes one JSON: the settings, the official figures of each step
(`train_step`'s, plus the gradient norm before clipping), and fingerprints
(tests/tensor_fingerprint.py) of what steps 1 and 3 changed: every variable,
BatchNorm statistics included (`update_step*`), and the EMA of every trained one
(`ema_update_step*`).
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
parser.add_argument('--automl', required=True, help='the efficientdet/ folder of google/automl')
parser.add_argument('--batch', required=True,
                    help='npz: images uint8 [B, H, W, 3], boxes_i [n, 4] (pixels, ymin xmin ymax '
                         'xmax), classes_i [n] (COCO ids, 1-based)')
parser.add_argument('--ckpt', required=True, help='the start checkpoint (released layout)')
parser.add_argument('--hparams', default='', help="the official config.override string, "
                    "e.g. 'label_smoothing=0.1,iou_loss_type=giou'")
parser.add_argument('--steps', type=int, default=3)
parser.add_argument('--out', required=True, help='the JSON to write')
parser.add_argument('--arrays', default='',
                    help='also save the full changes of steps 1 and --steps here (npz), to look '
                         'into a difference tensor by tensor')
args = parser.parse_args()
sys.path[:0] = [args.automl, TESTS]

import tensorflow as tf  # noqa: E402
tf.keras.backend.set_floatx('float64')
import hparams_config  # noqa: E402  (automl's modules)
import utils  # noqa: E402
from tf2 import anchors, train_lib, util_keras  # noqa: E402
from tensor_fingerprint import fingerprint  # noqa: E402

batch = np.load(args.batch)
images = batch['images']
n, height, width, _ = images.shape
config = hparams_config.get_efficientdet_config('efficientdet-d0')
if args.hparams:
  config.override(args.hparams, True)
config.image_size = utils.parse_image_size(f'{width}x{height}')   # the official string is WxH
# A constant learning rate of 0.08: train_lib scales learning_rate by batch / 64 and
# warms up from lr_warmup_init over lr_warmup_epoch * steps_per_epoch steps.
config.override(dict(batch_size=n, steps_per_epoch=1, lr_warmup_epoch=1.0, num_epochs=1000000,
                     learning_rate=0.08 * 64 / n, lr_warmup_init=0.08,
                     model_dir=tempfile.mkdtemp(),   # train_lib writes summaries there
                     strategy=None, mixed_precision=False, img_summary_steps=None), True)

# tf-addons' MovingAverage (train_lib.get_optimizer) wraps only the legacy Keras
# optimizers in TF 2.11 and later.
tf.keras.optimizers.SGD = tf.keras.optimizers.legacy.SGD
model = train_lib.EfficientDetNetTrain(config=config)
model.build((None, height, width, 3))
none = tf.keras.losses.Reduction.NONE
model.compile(optimizer=train_lib.get_optimizer(config.as_dict()), loss={   # as tf2/train.py
    train_lib.BoxLoss.__name__: train_lib.BoxLoss(config.delta, reduction=none),
    train_lib.BoxIouLoss.__name__: train_lib.BoxIouLoss(
        config.iou_loss_type, config.min_level, config.max_level, config.num_scales,
        config.aspect_ratios, config.anchor_scale, config.image_size, reduction=none),
    train_lib.FocalLoss.__name__: train_lib.FocalLoss(
        config.alpha, config.gamma, label_smoothing=config.label_smoothing, reduction=none)})
util_keras.restore_ckpt(model, args.ckpt, ema_decay=0)

# The targets as the official input pipeline makes them (float32; for train-d0's batch
# they equal its stored ones bit for bit).
labeler = anchors.AnchorLabeler(
    anchors.Anchors(config.min_level, config.max_level, config.num_scales, config.aspect_ratios,
                    config.anchor_scale, config.image_size), config.num_classes)
labels, positives = {}, []
for i in range(n):
  cls_targets, box_targets, num_positives = labeler.label_anchors(
      tf.constant(batch[f'boxes_{i}'], tf.float32),
      tf.constant(batch[f'classes_{i}'][:, None].astype(np.float32)))
  positives.append(float(num_positives))
  for level in cls_targets:
    labels.setdefault(f'cls_targets_{level}', []).append(cls_targets[level].numpy())
    labels.setdefault(f'box_targets_{level}', []).append(box_targets[level].numpy())
labels = {k: tf.constant(np.stack(v) if k.startswith('cls') else np.stack(v).astype(np.float64))
          for k, v in labels.items()}
labels['mean_num_positives'] = tf.constant(np.full([n], np.mean(positives)), tf.float64)
# train-d0 normalized float64 pixels with the official float32 constants.
pixels = ((tf.cast(images, tf.float64) - tf.cast(tf.constant(config.mean_rgb, tf.float32),
                                                 tf.float64))
          / tf.cast(tf.constant(config.stddev_rgb, tf.float32), tf.float64))

start = {v.name[:-2]: v.numpy().copy() for v in model.variables}
trained = model._freeze_vars()


@tf.function
def train_step(x, y):
  """`EfficientDetNetTrain.train_step`'s body (its own loss methods), also returning
  the gradient norm before clipping."""
  with tf.GradientTape() as tape:
    cls_outputs, box_outputs = util_keras.fp16_to_fp32_nested(model(x, training=True))
    values = {}
    det_loss = model._detection_loss(cls_outputs, box_outputs, y, values)
    l2_loss = model._reg_l2_loss(config.weight_decay)
    total = det_loss + tf.cast(l2_loss, det_loss.dtype)
  values['reg_l2_loss'] = l2_loss
  values['loss'] = total
  optimizer = model.optimizer
  values['learning_rate'] = optimizer.learning_rate(optimizer.iterations)
  grads = tape.gradient(total, trained)
  values['gradient_norm_raw'] = tf.linalg.global_norm(grads)
  grads = [tf.clip_by_norm(g, config.clip_gradients_norm) for g in grads]
  grads, _ = tf.clip_by_global_norm(grads, config.clip_gradients_norm)
  values['gradient_norm'] = tf.linalg.global_norm(grads)
  optimizer.apply_gradients(zip(grads, trained))
  return values


def changes():
  update = {v.name[:-2]: v.numpy() - start[v.name[:-2]] for v in model.variables
            if 'moving_' in v.name or v.trainable}
  ema = {v.name[:-2]: model.optimizer.get_slot(v, 'average').numpy() - start[v.name[:-2]]
         for v in trained}
  return update, ema


def compact(values):
  return [float('%.12g' % x) for x in values]


result = {'hparams': args.hparams, 'image_size_hw': [height, width], 'batch_size': n,
          'num_positives': positives, 'num_trained': len(trained), 'precision': 'float64',
          'tf_version': tf.__version__, 'steps': []}
for step in range(1, args.steps + 1):
  result['steps'].append({k: float(v) for k, v in train_step(pixels, labels).items()})
  print(step, json.dumps(result['steps'][-1]), flush=True)
  if step in (1, args.steps):
    update, ema = changes()
    result[f'update_step{step}'] = {k: compact(fingerprint(k, v)) for k, v in sorted(update.items())}
    result[f'ema_update_step{step}'] = {k: compact(fingerprint(k, v)) for k, v in sorted(ema.items())}
    if args.arrays:
      os.makedirs(args.arrays, exist_ok=True)
      np.savez(os.path.join(args.arrays, f'step{step}.npz'),
               **{'update/' + k: v for k, v in update.items()},
               **{'ema/' + k: v for k, v in ema.items()})
with open(args.out, 'w') as f:
  json.dump(result, f, indent=0)
