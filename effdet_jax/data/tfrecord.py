"""Sharded TFRecords of tf.Examples in the official EfficientDet layout.

Same feature keys as google/automl's `create_coco_tfrecord.py` (boxes
normalized to [0, 1], `image/object/class/label` holding the dataset's category
ids), so TFRecords made for the official code are read as they are.
`make_tfrecords` also writes `tfrecord_info.json` beside the shards: the
categories and each shard's record count, which saves a counting pass over the
files at start.
"""
import json
import logging
import os
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from effdet_jax.data import source

INFO_FILE = 'tfrecord_info.json'

_FEATURES = {
    'image/encoded': tf.io.FixedLenFeature((), tf.string),
    'image/source_id': tf.io.FixedLenFeature((), tf.string, ''),
    'image/object/bbox/xmin': tf.io.VarLenFeature(tf.float32),
    'image/object/bbox/xmax': tf.io.VarLenFeature(tf.float32),
    'image/object/bbox/ymin': tf.io.VarLenFeature(tf.float32),
    'image/object/bbox/ymax': tf.io.VarLenFeature(tf.float32),
    'image/object/class/label': tf.io.VarLenFeature(tf.int64),
    'image/object/area': tf.io.VarLenFeature(tf.float32),
    'image/object/is_crowd': tf.io.VarLenFeature(tf.int64),
}


def _bytes(values):
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _floats(values):
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _ints(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def serialize(encoded: bytes, image_id: int, file_name: str, height: int, width: int,
              boxes: np.ndarray, category_ids: np.ndarray, is_crowd: np.ndarray,
              areas: np.ndarray) -> bytes:
  """One image as a tf.Example; `boxes` `[N, 4]` in pixels, written normalized."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4) / [height, width, height, width]
  feature = {
      'image/encoded': _bytes([encoded]),
      'image/source_id': _bytes([str(image_id).encode()]),
      'image/filename': _bytes([file_name.encode()]),
      'image/height': _ints([height]),
      'image/width': _ints([width]),
      'image/object/bbox/ymin': _floats(boxes[:, 0]),
      'image/object/bbox/xmin': _floats(boxes[:, 1]),
      'image/object/bbox/ymax': _floats(boxes[:, 2]),
      'image/object/bbox/xmax': _floats(boxes[:, 3]),
      'image/object/class/label': _ints(np.asarray(category_ids, np.int64)),
      'image/object/is_crowd': _ints(np.asarray(is_crowd, np.int64)),
      'image/object/area': _floats(np.asarray(areas, np.float32)),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
  """A serialized tf.Example -> the raw example of `source.py` (boxes normalized)."""
  p = tf.io.parse_single_example(serialized, _FEATURES)
  dense = {k: tf.sparse.to_dense(v) for k, v in p.items() if isinstance(v, tf.SparseTensor)}
  boxes = tf.stack([dense['image/object/bbox/ymin'], dense['image/object/bbox/xmin'],
                    dense['image/object/bbox/ymax'], dense['image/object/bbox/xmax']], axis=-1)
  labels = dense['image/object/class/label']
  count = tf.shape(labels)[0]

  def per_box(values, default):
    # Old files may leave out area / is_crowd; then every box gets the default.
    return tf.cond(tf.shape(values)[0] == count, lambda: values,
                   lambda: tf.fill([count], tf.constant(default, values.dtype)))

  source_id = p['image/source_id']
  image_id = tf.cond(tf.strings.regex_full_match(source_id, r'-?[0-9]+'),
                     lambda: tf.strings.to_number(source_id, tf.int64), lambda: tf.constant(-1, tf.int64))
  return {
      'image': p['image/encoded'], 'image_id': image_id, 'missing': tf.constant(False),
      'boxes': boxes, 'category_ids': labels,
      'is_crowd': per_box(dense['image/object/is_crowd'], 0) > 0,
      'areas': per_box(dense['image/object/area'], -1.0)}


def read_info(folder: str) -> Dict:
  path = os.path.join(folder, INFO_FILE)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from e


def write_info(folder: str, categories: List[Dict], counts: Dict[str, int]):
  """Record categories and shard counts; shards already listed by other prefixes stay."""
  info = read_info(folder)
  info['categories'] = categories
  info.setdefault('num_records', {}).update(counts)
  with tf.io.gfile.GFile(os.path.join(folder, INFO_FILE), 'w') as f:
    json.dump(info, f, indent=1)


class TFRecordSource(source.Source):
  """Shards matching `file_pattern`; each host reads whole shards when there are
  at least as many shards as hosts, else every host reads all and keeps its share."""

  boxes_normalized = True

  def __init__(self, file_pattern: str, shuffle_buffer_size: int):
    if not file_pattern:
      raise ValueError('config.data.<split>.file_pattern: the TFRecord file pattern is not set')
    self.name = file_pattern
    self.files = sorted(tf.io.gfile.glob(file_pattern))
    if not self.files:
      raise FileNotFoundError(f'config.data.<split>.file_pattern: no files match {file_pattern}')
    self.shuffle_buffer_size = shuffle_buffer_size
    folders = sorted(set(os.path.dirname(f) for f in self.files))
    infos = [read_info(folder) for folder in folders]
    self.categories = next((i['categories'] for i in infos if 'categories' in i), None)
    known = {}
    for folder, info in zip(folders, infos):
      known.update({os.path.join(folder, k): v for k, v in info.get('num_records', {}).items()})
    unknown = [f for f in self.files if f not in known]
    if unknown:
      logging.info('counting the records of %d TFRecord files (no %s lists them)', len(unknown), INFO_FILE)
      for f in unknown:
        known[f] = int(tf.data.TFRecordDataset(f).reduce(np.int64(0), lambda n, _: n + 1))
    self.counts = [known[f] for f in self.files]

  def _host_files(self, process_index, process_count):
    if len(self.files) >= process_count:
      return self.files[process_index::process_count], False
    return self.files, True

  def num_examples(self, process_index: int, process_count: int) -> int:
    files, by_record = self._host_files(process_index, process_count)
    if not by_record:
      return sum(self.counts[process_index::process_count])
    return len(range(process_index, sum(self.counts), process_count))

  def epoch(self, epoch, seed: Optional[int], process_index: int, process_count: int):
    files, by_record = self._host_files(process_index, process_count)
    files = tf.constant(files)
    if seed is not None:
      key = tf.stack([tf.constant(seed, tf.int64), epoch])
      files = tf.random.experimental.stateless_shuffle(files, seed=key)
    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(self.files), 16), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if by_record:
      records = records.shard(process_count, process_index)
    if seed is not None:
      records = records.shuffle(self.shuffle_buffer_size, seed=seed * 1_000_003 + epoch)
    return records

  def parse(self, element):
    return parse(element)
