"""The official train-step reference (`../shared/parity/train-d0/`) as a user meets it:
its batch written as a COCO-JSON dataset, the command line that trains on it as
the official run did, and the per-tensor comparison of what three steps changed."""
import json
import os
import sys
from typing import Dict, List

import numpy as np
from PIL import Image

from conftest import PARITY
from effdet_jax.models import official_checkpoint as official
from effdet_jax.training import weights
from processes import ROOT

TRAIN_D0 = os.path.join(PARITY, 'train-d0')
D0_CONFIG = os.path.join(ROOT, 'effdet_jax', 'configs', 'efficientdet.py') + ':d0'


# The non-square batch of tests/data/official_training/d0_320x448_*.json: each
# reference photo on a black 320x448 canvas at its (row, column) offset.
NON_SQUARE = ((320, 448), ((0, 0), (64, 192), (32, 96), (64, 0)))


def reference_batch(placement=None) -> Dict[str, np.ndarray]:
  """The reference batch (`images`, `boxes_i`, `classes_i`); with a placement
  `((height, width), offsets)`, each photo pasted onto a black canvas of that size
  and its boxes moved with it."""
  batch = dict(np.load(os.path.join(TRAIN_D0, 'batch.npz')))
  if placement is None:
    return batch
  (height, width), offsets = placement
  images = np.zeros((len(offsets), height, width, 3), np.uint8)
  for i, (row, column) in enumerate(offsets):
    size = batch['images'][i].shape[:2]
    images[i, row:row + size[0], column:column + size[1]] = batch['images'][i]
    batch[f'boxes_{i}'] = batch[f'boxes_{i}'] + np.float32([row, column, row, column])
  batch['images'] = images
  return batch


def write_dataset(root: str, batch=None) -> str:
  """A batch (by default the reference's) as PNGs (lossless) and COCO-JSON boxes;
  returns the annotation file."""
  batch = reference_batch() if batch is None else batch
  os.makedirs(os.path.join(root, 'images'), exist_ok=True)
  images, annotations = [], []
  for i, pixels in enumerate(batch['images']):
    name = f'{i}.png'
    Image.fromarray(pixels).save(os.path.join(root, 'images', name))
    images.append({'id': i + 1, 'file_name': name, 'height': pixels.shape[0],
                   'width': pixels.shape[1]})
    for (ymin, xmin, ymax, xmax), category in zip(batch[f'boxes_{i}'].tolist(),
                                                  batch[f'classes_{i}'].tolist()):
      annotations.append({'id': len(annotations) + 1, 'image_id': i + 1, 'category_id': category,
                          'bbox': [xmin, ymin, xmax - xmin, ymax - ymin], 'iscrowd': 0,
                          'area': (xmax - xmin) * (ymax - ymin)})
  path = os.path.join(root, 'annotations.json')
  with open(path, 'w') as f:
    json.dump({'images': images, 'annotations': annotations,
               'categories': [{'id': i, 'name': str(i)} for i in range(1, 91)]}, f)
  return path


def command(data_root: str, workdir: str, *flags: str, image_size=(256, 256)) -> List[str]:
  """`effdet_jax.main` with the reference's settings (its README and meta.json)."""
  annotations = os.path.join(data_root, 'annotations.json')
  images = os.path.join(data_root, 'images')
  return [sys.executable, '-m', 'effdet_jax.main', '--config', D0_CONFIG, '--workdir', workdir,
          '--config.data.source=coco_json',
          f'--config.data.train.annotations={annotations}', f'--config.data.train.images={images}',
          f'--config.train.init_checkpoint={os.path.join(TRAIN_D0, "start_ckpt")}',
          f'--config.model.image_size={tuple(image_size)}', '--config.train.global_batch_size=4',
          '--config.data.jitter_min=1.0', '--config.data.jitter_max=1.0',
          '--config.data.input_rand_hflip=False',
          '--config.train.learning_rate=0.08', '--config.train.lr_warmup_init=0.08',
          '--config.train.warmup_steps=1', '--config.train.num_steps=1000000',
          '--stop_at_step=3', '--config.train.log_every_steps=1',
          '--config.train.official_path=tf2', '--config.train.precision=float64',
          '--config.model.upsample_in_float32=True', *flags]


def reference_steps() -> List[Dict[str, float]]:
  """The official per-step figures, under this project's metric names."""
  names = {'loss': 'loss', 'det_loss': 'det_loss', 'cls_loss': 'cls_loss',
           'box_loss': 'box_loss', 'l2_loss': 'reg_l2_loss', 'learning_rate': 'learning_rate',
           'grad_norm': 'gradient_norm_raw'}
  meta = json.load(open(os.path.join(TRAIN_D0, 'meta.json')))
  return [{ours: step[theirs] for ours, theirs in names.items()} for step in meta['steps']]


def relative_errors(ours: Dict[str, np.ndarray], official: Dict[str, np.ndarray],
                    absolute_below: float = 0.0) -> Dict[str, float]:
  """Per tensor, ||ours - official|| / ||official||; where the official change is
  below `absolute_below` in norm, the plain ||ours - official|| instead (the conv
  biases in front of a BatchNorm have zero gradient in exact arithmetic)."""
  errors = {}
  for name, want in official.items():
    want = np.asarray(want, np.float64)
    diff = float(np.linalg.norm(np.asarray(ours[name], np.float64) - want))
    scale = float(np.linalg.norm(want))
    errors[name] = diff if scale < absolute_below else diff / scale
  return errors


def trained_changes(workdir: str, config, step=None) -> Dict[str, Dict[str, np.ndarray]]:
  """What the run in `workdir` changed, by official name: `update` (weights and
  BatchNorm statistics, value minus start) and `ema_update` (the EMA of the
  trained weights minus their start), from its checkpoint of `step` (the latest
  by default)."""
  begin = official.official_variables(
      official.load_official_checkpoint(config.train.init_checkpoint, config), config)
  loaded = weights.load_workdir(workdir, config, step)
  raw, ema = loaded.raw, loaded.ema
  now, averaged = official.official_variables(raw, config), official.official_variables(ema, config)
  return {'update': {k: now[k] - begin[k] for k in begin},
          'ema_update': {k: averaged[k] - begin[k] for k in begin}}
