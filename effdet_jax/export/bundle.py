"""The inference bundle: the EMA weights of a model, the config that builds it
and the categories its classes stand for, and nothing else (no optimizer
state), so one call gives a working `Detector`."""
import json
import os
from typing import Optional

import ml_collections
import tensorflow as tf

from effdet_jax.data.categories import FILENAME as CATEGORIES_FILE, CategoryMap
from effdet_jax.inference.detector import Detector
from effdet_jax.training import checkpoint

BUNDLE_FILE = 'bundle.json'
FORMAT = 'effdet_jax.bundle'
VERSION = 1


def write_bundle(directory: str, config: ml_collections.ConfigDict, variables,
                 categories: CategoryMap, source: str, step: int) -> None:
  """`DIR/variables` (orbax), `DIR/config.json`, `DIR/categories.json`, `DIR/bundle.json`."""
  categories.check_model(config.model.num_classes, source)
  checkpoint.save_variables(directory, variables, config)
  categories.save(os.path.join(directory, CATEGORIES_FILE))
  with open(os.path.join(directory, BUNDLE_FILE), 'w') as f:
    json.dump({'format': FORMAT, 'version': VERSION, 'model': config.model.name,
               'image_size': list(config.model.image_size),
               'num_classes': config.model.num_classes, 'source': source, 'step': step}, f, indent=1)


def is_bundle(path: str) -> bool:
  return tf.io.gfile.exists(os.path.join(path, BUNDLE_FILE))


def read_bundle_config(directory: str) -> ml_collections.ConfigDict:
  """The config a bundle was written with (JSON lists where the config had tuples)."""
  if not is_bundle(directory):
    raise FileNotFoundError(f'{directory!r} is not an inference bundle: no {BUNDLE_FILE} '
                            f'(write one with python -m effdet_jax.export --format bundle)')
  with tf.io.gfile.GFile(os.path.join(directory, BUNDLE_FILE)) as f:
    meta = json.load(f)
  if meta.get('format') != FORMAT or meta.get('version', 0) > VERSION:
    raise ValueError(f'{directory}/{BUNDLE_FILE}: expected format {FORMAT!r} version <= '
                     f'{VERSION}, got {meta.get("format")!r} version {meta.get("version")}')
  with tf.io.gfile.GFile(os.path.join(directory, checkpoint.CONFIG_FILE)) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_bundle(directory: str, per_class: Optional[bool] = None,
                batch_size: int = 1) -> Detector:
  """A `Detector` from a bundle: its weights, config, category ids and names."""
  config = read_bundle_config(directory)
  variables = checkpoint.restore_variables(directory, config)
  categories = CategoryMap.load(os.path.join(directory, CATEGORIES_FILE))
  num_classes = config.model.num_classes
  return Detector(config, variables, per_class=per_class, batch_size=batch_size,
                  category_ids=categories.category_ids(num_classes),
                  category_names=dict(zip(categories.ids, categories.names)))
