"""Dataset category ids <-> the model's 0-based classes.

Datasets number their categories however they like (COCO uses 1..90 with
gaps, labeling tools often start at 0 or use large ids); the model's class
head is indexed 0..num_classes-1. Two schemes:

- `id_minus_one`: class = id - 1, the official COCO models' layout (90 outputs,
  10 of them unused), so official checkpoints work unchanged;
- `contiguous`: the sorted ids become classes 0..K-1, for custom datasets.

The map is saved next to checkpoints (`categories.json`) so detections can be
mapped back to the dataset's ids after training.
"""
import dataclasses
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from effdet_jax.data.coco_labels import COCO_NAMES

SCHEMES = ('id_minus_one', 'contiguous')
FILENAME = 'categories.json'


@dataclasses.dataclass(frozen=True)
class CategoryMap:
  ids: Tuple[int, ...]       # dataset category ids, ascending
  names: Tuple[str, ...]
  classes: Tuple[int, ...]   # model class of each id

  @classmethod
  def build(cls, categories: Sequence[Dict], scheme: str, source: str = 'categories') -> 'CategoryMap':
    """From COCO-style `[{'id': int, 'name': str}, ...]`; `source` names the
    file in errors."""
    if scheme not in SCHEMES:
      raise ValueError(f'unknown category scheme {scheme!r}; expected one of {SCHEMES}')
    entries = {}
    for i, category in enumerate(categories):
      if not isinstance(category, dict) or 'id' not in category:
        raise ValueError(f'{source}: categories[{i}] must be an object with an integer "id"')
      cid = category['id']
      if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)):
        raise ValueError(f'{source}: categories[{i}].id must be an integer, got {cid!r}')
      if cid in entries:
        raise ValueError(f'{source}: category id {cid} appears twice in "categories"')
      entries[int(cid)] = str(category.get('name', f'class_{cid}'))
    if not entries:
      raise ValueError(f'{source}: "categories" is empty')
    ids = tuple(sorted(entries))
    if scheme == 'id_minus_one':
      if ids[0] < 1:
        raise ValueError(f'{source}: category id {ids[0]} cannot use the id_minus_one scheme '
                         f'(ids must be >= 1); use config.data.category_scheme="contiguous"')
      classes = tuple(i - 1 for i in ids)
    else:
      classes = tuple(range(len(ids)))
    return cls(ids, tuple(entries[i] for i in ids), classes)

  @classmethod
  def coco(cls, scheme: str = 'id_minus_one') -> 'CategoryMap':
    """COCO 2017's 80 categories."""
    return cls.build([{'id': i, 'name': n} for i, n in COCO_NAMES.items()], scheme, 'COCO 2017')

  @property
  def num_classes(self) -> int:
    """Classes the model needs: one past the largest class."""
    return max(self.classes) + 1

  def check_model(self, num_classes: int, source: str):
    if self.num_classes > num_classes:
      raise ValueError(f'{source}: the categories need {self.num_classes} model classes '
                       f'(largest class {self.num_classes - 1}), config.model.num_classes is '
                       f'{num_classes}')

  def category_ids(self, num_classes: int) -> np.ndarray:
    """Dataset id of each model class (`[num_classes]`, -1 for classes no category uses)."""
    out = np.full([num_classes], -1, np.int64)
    out[list(self.classes)] = self.ids
    return out

  def class_names(self, num_classes: int) -> List[str]:
    names = [f'class_{c}' for c in range(num_classes)]
    for c, name in zip(self.classes, self.names):
      names[c] = name
    return names

  def lookup_table(self) -> tf.lookup.StaticHashTable:
    """tf.data-side map from category id (int64) to class (int32); unknown ids give -1."""
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(self.ids, tf.int64),
                                            tf.constant(self.classes, tf.int32)),
        default_value=-1)

  def to_json(self) -> List[Dict]:
    return [{'id': i, 'name': n, 'class': c} for i, n, c in zip(self.ids, self.names, self.classes)]

  def save(self, path: str):
    with tf.io.gfile.GFile(path, 'w') as f:
      json.dump(self.to_json(), f, indent=1)

  @classmethod
  def load(cls, path: str) -> 'CategoryMap':
    with tf.io.gfile.GFile(path) as f:
      entries = json.load(f)
    try:
      entries = sorted(entries, key=lambda e: e['id'])
      return cls(tuple(int(e['id']) for e in entries), tuple(str(e['name']) for e in entries),
                 tuple(int(e['class']) for e in entries))
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f'{path}: expected a list of {{"id", "name", "class"}} objects ({e})') from e


def read_categories_file(path: str, scheme: str) -> CategoryMap:
  """A COCO annotation file (its "categories") or a saved `categories.json`."""
  with tf.io.gfile.GFile(path) as f:
    try:
      content = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from e
  if isinstance(content, dict):
    if 'categories' not in content:
      raise ValueError(f'{path}: no "categories" field')
    content = content['categories']
  if not isinstance(content, list):
    raise ValueError(f'{path}: "categories" must be a list')
  if content and isinstance(content[0], dict) and 'class' in content[0]:
    return CategoryMap.load(path)
  return CategoryMap.build(content, scheme, path)


def resolve(spec: str, scheme: str, dataset_categories: Optional[CategoryMap]) -> CategoryMap:
  """`config.data.categories`: '' (the dataset's own), 'coco', or a file path."""
  if spec == 'coco':
    return CategoryMap.coco(scheme)
  if spec:
    return read_categories_file(spec, scheme)
  if dataset_categories is None:
    raise ValueError('this dataset does not list its categories; set config.data.categories '
                     'to "coco" or to a JSON file with a COCO "categories" list')
  return dataset_categories
