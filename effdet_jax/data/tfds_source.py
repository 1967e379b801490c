"""TFDS detection datasets: `coco/2017` first, others with an `objects` sequence.

Images stay encoded (SkipDecoding) so decoding happens in our pipeline, where
undecodable images are caught and counted like for every other source. TFDS
numbers COCO's 80 categories 0..79; they are mapped back to COCO's own ids
(1..90) so the official 90-class models' outputs line up.
"""
import functools
import logging
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from effdet_jax.data import source
from effdet_jax.data.coco_labels import COCO_NAMES


class TfdsSource(source.Source):
  boxes_normalized = True

  def __init__(self, name: str, split: str, data_dir: str, shuffle_buffer_size: int):
    if not name:
      raise ValueError('config.data.<split>.tfds_name: the TFDS dataset name is not set')
    self.name = f'{name}:{split}'
    self.split = split
    self.shuffle_buffer_size = shuffle_buffer_size
    self.builder = tfds.builder(name, data_dir=data_dir or None)
    features = self.builder.info.features
    if 'objects' not in features or 'bbox' not in features['objects']:
      raise ValueError(f'TFDS dataset {name} has no objects/bbox feature; not a detection dataset')
    objects = features['objects']
    label_names = objects['label'].names
    self._has_crowd = 'is_crowd' in objects
    self._has_area = 'area' in objects
    self._has_id = 'image/id' in features
    if name.split('/')[0] == 'coco':
      coco_ids = sorted(COCO_NAMES)
      if len(label_names) != len(coco_ids):
        raise ValueError(f'{name}: expected COCO\'s 80 labels, the dataset has {len(label_names)}')
      self._label_ids = np.asarray(coco_ids, np.int64)
    else:
      self._label_ids = np.arange(len(label_names), dtype=np.int64)
    self.categories = [{'id': int(i), 'name': n} for i, n in zip(self._label_ids, label_names)]

  def _host_split(self, process_index, process_count):
    if process_count == 1:
      return self.split
    return tfds.even_splits(self.split, n=process_count)[process_index]

  @functools.lru_cache(maxsize=None)
  def _dataset(self, process_index, process_count):
    # Built once, outside the epoch function that captures it.
    return self.builder.as_dataset(
        split=self._host_split(process_index, process_count), shuffle_files=False,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=False))

  def num_examples(self, process_index: int, process_count: int) -> int:
    cardinality = int(self._dataset(process_index, process_count).cardinality())
    if cardinality >= 0:
      return cardinality
    logging.info('%s: counting the examples of this host\'s split', self.name)
    return int(self._dataset(process_index, process_count).reduce(np.int64(0), lambda n, _: n + 1))

  def epoch(self, epoch, seed: Optional[int], process_index: int, process_count: int):
    dataset = self._dataset(process_index, process_count)
    if seed is not None:
      dataset = dataset.shuffle(self.shuffle_buffer_size, seed=seed * 1_000_003 + epoch)
    return dataset

  def parse(self, element):
    objects = element['objects']
    labels = tf.reshape(tf.cast(objects['label'], tf.int64), [-1])
    count = tf.shape(labels)[0]
    if self._has_id:
      image_id = tf.reshape(tf.cast(element['image/id'], tf.int64), [])
    else:
      image_id = tf.strings.to_hash_bucket_fast(element['image/filename'], 2**62)
    return {
        'image': element['image'], 'image_id': image_id, 'missing': tf.constant(False),
        'boxes': tf.reshape(tf.cast(objects['bbox'], tf.float32), [-1, 4]),
        'category_ids': tf.gather(tf.constant(self._label_ids), labels),
        'is_crowd': (tf.reshape(tf.cast(objects['is_crowd'], tf.bool), [-1]) if self._has_crowd
                     else tf.zeros([count], tf.bool)),
        'areas': (tf.reshape(tf.cast(objects['area'], tf.float32), [-1]) if self._has_area
                  else tf.fill([count], -1.0))}
