"""A COCO-JSON annotation file plus an image folder: the format labeling tools export.

The file is read and checked once at start: a malformed file fails there, with
the file and the field named. Problems that only cost some data (annotations of
images the file does not list, image files that are not in the folder) are
counted and reported, never fatal.
"""
import collections
import dataclasses
import json
import logging
import os
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from effdet_jax.data import source


def _fail(path, message):
  raise ValueError(f'{path}: {message}')


def _integer(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _number(value) -> bool:
  return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


@dataclasses.dataclass
class CocoAnnotations:
  """The checked content of one annotation file, one row per listed image."""
  path: str
  categories: List[Dict]
  image_ids: np.ndarray      # [N] int64
  file_names: List[str]
  heights: np.ndarray        # [N] int64, -1 where the file does not say
  widths: np.ndarray
  row_splits: np.ndarray     # [N + 1]: annotations of image i are rows row_splits[i]:row_splits[i+1]
  boxes: np.ndarray          # [T, 4] float32 [ymin, xmin, ymax, xmax] pixels, as written (unchecked)
  category_ids: np.ndarray   # [T] int64
  is_crowd: np.ndarray       # [T] bool
  areas: np.ndarray          # [T] float32, -1 where the file does not say
  annotations_without_image: int

  def __len__(self):
    return len(self.image_ids)


def read_annotations(path: str) -> CocoAnnotations:
  """Parse and check a COCO annotation file (`images`, `annotations`, `categories`)."""
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'annotation file {path} does not exist')
  with tf.io.gfile.GFile(path) as f:
    try:
      content = json.load(f)
    except json.JSONDecodeError as e:
      _fail(path, f'not valid JSON ({e})')
  if not isinstance(content, dict):
    _fail(path, 'expected a JSON object with "images", "annotations" and "categories"')
  for field in ('images', 'categories'):
    if not isinstance(content.get(field), list):
      _fail(path, f'"{field}" must be a list' if field in content else f'no "{field}" field')
  annotations = content.get('annotations', [])
  if not isinstance(annotations, list):
    _fail(path, '"annotations" must be a list')

  image_ids, file_names, heights, widths = [], [], [], []
  row_of = {}
  for i, image in enumerate(content['images']):
    where = f'images[{i}]'
    if not isinstance(image, dict):
      _fail(path, f'{where} must be an object')
    if not _integer(image.get('id')):
      _fail(path, f'{where}.id must be an integer, got {image.get("id")!r}')
    if not isinstance(image.get('file_name'), str) or not image['file_name']:
      _fail(path, f'{where}.file_name must be a non-empty string, got {image.get("file_name")!r}')
    for key in ('height', 'width'):
      if key in image and not (_integer(image[key]) and image[key] > 0):
        _fail(path, f'{where}.{key} must be a positive integer, got {image[key]!r}')
    if image['id'] in row_of:
      _fail(path, f'{where}.id {image["id"]} is used by images[{row_of[image["id"]]}] too')
    row_of[image['id']] = i
    image_ids.append(image['id'])
    file_names.append(image['file_name'])
    heights.append(image.get('height', -1))
    widths.append(image.get('width', -1))

  per_image = collections.defaultdict(list)
  without_image = 0
  for i, ann in enumerate(annotations):
    where = f'annotations[{i}]'
    if not isinstance(ann, dict):
      _fail(path, f'{where} must be an object')
    if not _integer(ann.get('image_id')):
      _fail(path, f'{where}.image_id must be an integer, got {ann.get("image_id")!r}')
    if not _integer(ann.get('category_id')):
      _fail(path, f'{where}.category_id must be an integer, got {ann.get("category_id")!r}')
    bbox = ann.get('bbox')
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
      _fail(path, f'{where}.bbox must be 4 numbers [x, y, width, height], got {bbox!r}')
    crowd = ann.get('iscrowd', 0)
    if crowd not in (0, 1, True, False):
      _fail(path, f'{where}.iscrowd must be 0 or 1, got {crowd!r}')
    area = ann.get('area', -1)
    if not _number(area):
      _fail(path, f'{where}.area must be a number, got {area!r}')
    if ann['image_id'] not in row_of:
      without_image += 1
      continue
    x, y, w, h = bbox
    per_image[row_of[ann['image_id']]].append((y, x, y + h, x + w, ann['category_id'], bool(crowd), area))

  rows = [per_image.get(i, []) for i in range(len(image_ids))]
  flat = [r for image_rows in rows for r in image_rows]
  table = np.array([r[:4] for r in flat], np.float64).reshape(-1, 4)
  if without_image:
    logging.warning('%s: %d annotations name an image id the file does not list; they are left out',
                    path, without_image)
  return CocoAnnotations(
      path=path,
      categories=content['categories'],
      image_ids=np.asarray(image_ids, np.int64),
      file_names=file_names,
      heights=np.asarray(heights, np.int64),
      widths=np.asarray(widths, np.int64),
      row_splits=np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64),
      boxes=table.astype(np.float32),
      category_ids=np.asarray([r[4] for r in flat], np.int64),
      is_crowd=np.asarray([r[5] for r in flat], bool),
      areas=np.asarray([r[6] for r in flat], np.float32),
      annotations_without_image=without_image)


def existing_files(root: str, file_names: List[str]) -> np.ndarray:
  """Which of `root/file_name` exist, with one directory listing per folder
  (cheap on GCS, where a stat per image is not)."""
  listings = {}
  present = np.zeros(len(file_names), bool)
  for i, name in enumerate(file_names):
    folder, base = os.path.split(os.path.join(root, name))
    if folder not in listings:
      listings[folder] = (set(n.rstrip('/') for n in tf.io.gfile.listdir(folder))
                          if tf.io.gfile.isdir(folder) else set())
    present[i] = base in listings[folder]
  return present


class CocoJsonSource(source.Source):
  """Examples from an annotation file and the folder its `file_name`s are relative to."""

  image_is_path = True
  boxes_normalized = False
  random_access = True

  def __init__(self, annotations: str, images: str):
    if not annotations:
      raise ValueError('config.data.<split>.annotations: the COCO-JSON annotation file is not set')
    if not images:
      raise ValueError('config.data.<split>.images: the image folder is not set')
    if not tf.io.gfile.isdir(images):
      raise FileNotFoundError(f'config.data.<split>.images: image folder {images} does not exist')
    self.name = annotations
    self.coco = read_annotations(annotations)
    self.categories = self.coco.categories
    present = existing_files(images, self.coco.file_names)
    self.missing = ~present
    if self.missing.any():
      logging.warning('%s: %d of %d image files are missing from %s; they are skipped and counted',
                      annotations, int(self.missing.sum()), len(present), images)
    self.paths = [os.path.join(images, n) for n in self.coco.file_names]
    self.index_drops = ({'annotation_without_image': self.coco.annotations_without_image}
                        if self.coco.annotations_without_image else {})
    c = self.coco
    self._tensors = {
        'path': tf.constant(self.paths), 'image_id': tf.constant(c.image_ids),
        'missing': tf.constant(self.missing), 'row_splits': tf.constant(c.row_splits),
        'boxes': tf.constant(c.boxes), 'category_ids': tf.constant(c.category_ids),
        'is_crowd': tf.constant(c.is_crowd), 'areas': tf.constant(c.areas)}

  def host_rows(self, process_index: int, process_count: int) -> np.ndarray:
    return np.arange(len(self.coco), dtype=np.int64)[process_index::process_count]

  def num_examples(self, process_index: int, process_count: int) -> int:
    return len(self.host_rows(process_index, process_count))

  def epoch(self, epoch, seed: Optional[int], process_index: int, process_count: int):
    rows = tf.constant(self.host_rows(process_index, process_count))
    if seed is not None:
      rows = tf.random.experimental.stateless_shuffle(rows, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
    return tf.data.Dataset.from_tensor_slices(rows)

  def parse(self, row):
    t = self._tensors
    start, end = t['row_splits'][row], t['row_splits'][row + 1]
    return {
        'image': t['path'][row], 'image_id': t['image_id'][row], 'missing': t['missing'][row],
        'boxes': t['boxes'][start:end], 'category_ids': t['category_ids'][start:end],
        'is_crowd': t['is_crowd'][start:end], 'areas': t['areas'][start:end]}
