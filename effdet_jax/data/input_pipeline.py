"""The training and evaluation input pipelines, for every source.

Training stream of one host, as a function of (config.seed, step):
  epochs e = e0, e0+1, ...: the examples shuffled by (seed, e) -> numbered ->
  in epoch e0, skip to the resume position -> this host's examples -> parse ->
  read + decode (failures become flagged placeholders) -> clean boxes ->
  augment with a seed made from the example's place in the stream ->
  fixed-size batch.
Nothing is dropped after the position is fixed, so step k's batch is the same
whether the run started at 0 or resumed at k.

Sources with random access (COCO-JSON) have one global order: global batch k
is the same examples whatever the number of hosts, and host p reads only its
slice of it, so a run on 2 hosts sees exactly the data of a run on 1. Sharded
sources (TFRecords, TFDS) give each host its own shard and shuffle it, since a
global order would make every host read every record.

Targets (anchor labels) are not computed here: the batch carries the padded
ground truth and the train step assigns anchors on device (see
`detection.target_assigner.batch_targets` for why).
"""
import dataclasses
import logging
from typing import Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from effdet_jax.data import augment, autoaugment, categories as categories_lib, sanitize
from effdet_jax.data import mosaic as mosaic_lib
from effdet_jax.data.coco_json import CocoJsonSource
from effdet_jax.data.source import Source
from effdet_jax.data.tfds_source import TfdsSource
from effdet_jax.data.tfrecord import TFRecordSource

SOURCES = ('tfds', 'coco_json', 'tfrecord')
# What the train step needs; the rest of a batch (bad-data counts, ids) stays on the host.
TRAIN_DEVICE_KEYS = ('image', 'boxes', 'classes', 'image_valid')
_NO_END = 2**62


def open_source(config: ml_collections.ConfigDict, split: str) -> Source:
  """The reader named by `config.data.source` for `config.data.<split>`."""
  data = config.data
  if split not in data:
    raise ValueError(f'config.data has no split {split!r}')
  spec = data[split]
  kind = data.source
  if kind == 'tfds':
    return TfdsSource(spec.tfds_name, spec.tfds_split, spec.data_dir, data.shuffle_buffer_size)
  if kind == 'coco_json':
    return CocoJsonSource(spec.annotations, spec.images)
  if kind == 'tfrecord':
    return TFRecordSource(spec.file_pattern, data.shuffle_buffer_size)
  if kind == 'synthetic':
    raise ValueError("config.data.source='synthetic' is resolved to its COCO-JSON files by "
                     "effdet_jax.data.synthetic.resolve(config, workdir), which the main entry "
                     "point calls; call it first")
  raise ValueError(f'config.data.source is {kind!r}; expected one of {SOURCES} or synthetic')


def category_map(config: ml_collections.ConfigDict, source: Source) -> categories_lib.CategoryMap:
  """The dataset -> model class map for this config, checked against the model."""
  data = config.data
  found = (categories_lib.CategoryMap.build(source.categories, data.category_scheme, source.name)
           if source.categories is not None else None)
  cmap = categories_lib.resolve(data.categories, data.category_scheme, found)
  cmap.check_model(config.model.num_classes, source.name)
  return cmap


def host_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f'the global batch size {global_batch_size} does not divide by the '
                     f'{process_count} processes')
  return global_batch_size // process_count


def _process(process_index, process_count):
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def _options(deterministic: bool = True) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  options.experimental_optimization.map_parallelization = True
  return options


def _loaded(examples: tf.data.Dataset, source: Source) -> tf.data.Dataset:
  return examples.interleave(lambda e: sanitize.load_image(e, source.image_is_path),
                             cycle_length=tf.data.AUTOTUNE, num_parallel_calls=tf.data.AUTOTUNE,
                             deterministic=True)


@dataclasses.dataclass
class TrainData:
  dataset: tf.data.Dataset   # infinite; batches of this host
  categories: categories_lib.CategoryMap
  examples_per_epoch: int    # this host's share (on average, for a global order)
  source: Source


def train_data(config: ml_collections.ConfigDict, start_step: int = 0,
               process_index: Optional[int] = None, process_count: Optional[int] = None,
               source: Optional[Source] = None) -> TrainData:
  """This host's training batches from step `start_step` on.

  Each batch: `image` `[B, H, W, 3]` (float32, or the model's bfloat16, float16 or
  float64), `boxes` `[B, M, 4]` in input pixels, `classes` `[B, M]` (-1
  padding), `image_valid` `[B]`, `image_id`, and the bad-data counts
  `images_skipped`, `boxes_dropped`, `boxes_clipped` per image.
  """
  index, count = _process(process_index, process_count)
  data = config.data
  autoaugment.check_policy(data.autoaugment_policy)   # at start, not inside tf.data
  source = source or open_source(config, 'train')
  cmap = category_map(config, source)
  global_batch = config.train.global_batch_size
  batch = host_batch_size(global_batch, count)
  if source.random_access:
    # One global order; host p takes slots [p*b, (p+1)*b) of every global batch.
    n = source.num_examples(0, 1)
    start_epoch, position = divmod(start_step * global_batch, n)
    host_share = n // count
  else:
    n = source.num_examples(index, count)
    start_epoch, position = divmod(start_step * batch, n)
    host_share = n
  if n == 0 or host_share == 0:
    raise ValueError(f'{source.name}: process {index} of {count} has no training examples')
  logging.info('training data %s: %d examples per epoch (%s); step %d starts at epoch %d, '
               'example %d', source.name, n,
               'global order' if source.random_access else "this host's shard",
               start_step, start_epoch, position)
  seed = int(config.seed)
  output_size = tuple(config.model.image_size)
  max_instances = data.max_instances_per_image
  image_dtype = tf.as_dtype(config.model.dtype)
  # Normalized in float32 as the official pipeline (float64 in a float64 run), then cast.
  augment_dtype = tf.float64 if image_dtype == tf.float64 else tf.float32
  table = cmap.lookup_table()

  def epoch(e):
    if source.random_access:
      elements = source.epoch(e, seed, 0, 1).enumerate()
    else:
      elements = source.epoch(e, seed, index, count).enumerate()
    elements = elements.skip(tf.where(tf.equal(e, start_epoch), tf.constant(position, tf.int64), 0))
    if source.random_access:
      mine = lambda i, _: (e * n + i) % global_batch // batch == index
      elements = elements.filter(mine)
    return elements.map(lambda i, element: (e, i, element))

  def parse(e, i, element):
    example = source.parse(element)
    # Seeded by the example's place in the stream (and the host, whose stream it is
    # for sharded sources), so it is augmented the same wherever it is processed.
    key = tf.stack([tf.constant(seed, tf.int64),
                    tf.constant(-1 if source.random_access else index, tf.int64)])
    key = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(key, e), i)
    example['seed'] = key
    return example

  def clean(example):
    return sanitize.clean(example, table, source.boxes_normalized,
                          data.skip_crowd_during_training, max_instances)

  def transform(example):
    image, boxes, classes = augment.train_transform(
        example['pixels'], example['boxes'], example['classes'], output_size, example['seed'],
        data.input_rand_hflip, data.jitter_min, data.jitter_max, config.model.mean_rgb,
        config.model.stddev_rgb, augment_dtype, data.grid_mask, data.autoaugment_policy)
    return {
        'image': tf.ensure_shape(tf.cast(image, image_dtype), [*output_size, 3]),
        'boxes': augment.pad_to(boxes, max_instances, 0.0),
        'classes': augment.pad_to(classes, max_instances, -1),
        'image_valid': example['image_valid'], 'image_id': example['image_id'],
        'images_skipped': example['images_skipped'], 'boxes_dropped': example['boxes_dropped'],
        'boxes_clipped': example['boxes_clipped']}

  ds = tf.data.Dataset.range(start_epoch, _NO_END).flat_map(epoch)
  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = _loaded(ds, source)
  if data.mosaic:   # each example and the next three of the stream in one image
    ds = ds.map(clean, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = mosaic_lib.windows(ds).map(
        lambda group: mosaic_lib.mosaic(group, output_size, max_instances),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    ds = ds.map(lambda example: transform(clean(example)), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return TrainData(ds.with_options(_options()), cmap, host_share, source)


@dataclasses.dataclass
class EvalData:
  dataset: tf.data.Dataset   # `num_batches` batches on every host
  categories: categories_lib.CategoryMap
  num_batches: int
  num_examples: int          # this host's real (unpadded) examples
  source: Source


def eval_data(config: ml_collections.ConfigDict, batch_size: int, split: str = 'val',
              process_index: Optional[int] = None, process_count: Optional[int] = None,
              source: Optional[Source] = None) -> EvalData:
  """This host's share of an evaluation split, each image once, in dataset order.

  Every host yields the same number of batches (a global step needs all of
  them); the last ones are padded with `image_valid=False` examples. Each
  batch: `image`, `image_id`, `image_scale` (original pixels per input pixel),
  `original_size` `[B, 2]`, `image_valid`, and the ground truth in original
  pixels with the dataset's ids (crowd boxes kept): `gt_boxes` `[B, M, 4]`,
  `gt_category_ids` (-1 padding), `gt_is_crowd`, `gt_areas`.
  """
  index, count = _process(process_index, process_count)
  source = source or open_source(config, split)
  cmap = category_map(config, source)
  batch = host_batch_size(batch_size, count)
  n = source.num_examples(index, count)
  num_batches = max(-(-source.num_examples(p, count) // batch) for p in range(count))
  output_size = tuple(config.model.image_size)
  max_instances = config.data.max_instances_per_image
  table = cmap.lookup_table()

  def transform(example):
    example = sanitize.clean(example, table, source.boxes_normalized, False, max_instances)
    image, scale = augment.eval_transform(example['pixels'], output_size, config.model.mean_rgb,
                                          config.model.stddev_rgb)
    return {
        'image': tf.ensure_shape(image, [*output_size, 3]), 'image_id': example['image_id'],
        'image_scale': scale, 'original_size': tf.shape(example['pixels'])[:2],
        'image_valid': example['image_valid'],
        'gt_boxes': augment.pad_to(example['boxes'], max_instances, 0.0),
        'gt_category_ids': augment.pad_to(example['category_ids'], max_instances, -1),
        'gt_is_crowd': augment.pad_to(example['is_crowd'], max_instances, False),
        'gt_areas': augment.pad_to(example['areas'], max_instances, 0.0),
        'images_skipped': example['images_skipped'], 'boxes_dropped': example['boxes_dropped']}

  ds = source.epoch(tf.constant(0, tf.int64), None, index, count)
  ds = ds.map(source.parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = _loaded(ds, source).map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  padding = tf.data.Dataset.from_tensors(
      tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec))
  ds = ds.concatenate(padding.repeat(num_batches * batch - n))
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return EvalData(ds.with_options(_options()), cmap, num_batches, n, source)


def scan(config: ml_collections.ConfigDict, split: str = 'train',
         source: Optional[Source] = None) -> Dict:
  """Read a whole split once with the training cleaning rules; totals of what
  training will use and of everything left out, by reason."""
  source = source or open_source(config, split)
  cmap = category_map(config, source)
  table = cmap.lookup_table()
  data = config.data

  def stats(example):
    example = sanitize.clean(example, table, source.boxes_normalized,
                             data.skip_crowd_during_training, data.max_instances_per_image)
    return {'images': tf.cast(example['image_valid'], tf.int64),
            'boxes': tf.cast(tf.shape(example['classes'])[0], tf.int64),
            'boxes_clipped': tf.cast(example['boxes_clipped'], tf.int64),
            'images_skipped': tf.cast(example['images_skipped'], tf.int64),
            'boxes_dropped': tf.cast(example['boxes_dropped'], tf.int64)}

  ds = source.epoch(tf.constant(0, tf.int64), None, 0, 1)
  ds = ds.map(source.parse, num_parallel_calls=tf.data.AUTOTUNE)
  ds = _loaded(ds, source).map(stats, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
  totals = ds.with_options(_options(deterministic=False)).reduce(
      tf.nest.map_structure(lambda s: tf.zeros(s.shape[1:], s.dtype), ds.element_spec),
      lambda acc, b: tf.nest.map_structure(lambda a, x: a + tf.reduce_sum(x, axis=0), acc, b))
  totals = tf.nest.map_structure(lambda t: t.numpy(), totals)
  dropped = dict(zip(sanitize.BOX_DROP_REASONS, totals['boxes_dropped'].tolist()))
  dropped.update(source.index_drops)
  return {
      'images': int(totals['images']),
      'images_skipped': dict(zip(sanitize.IMAGE_SKIP_REASONS, totals['images_skipped'].tolist())),
      'boxes': int(totals['boxes']),
      'boxes_dropped': dropped,
      'boxes_clipped': int(totals['boxes_clipped']),
      'categories': len(cmap.ids),
  }


def bad_data_counts(batch: Dict[str, np.ndarray]) -> Tuple[Dict[str, int], Dict[str, int]]:
  """A host batch's skipped images and dropped boxes, by reason (for logging)."""
  images = dict(zip(sanitize.IMAGE_SKIP_REASONS, np.sum(batch['images_skipped'], axis=0).tolist()))
  boxes = dict(zip(sanitize.BOX_DROP_REASONS, np.sum(batch['boxes_dropped'], axis=0).tolist()))
  return images, boxes
