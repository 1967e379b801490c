"""Readers (COCO-JSON, TFRecord, TFDS) and bad data: every case handled and counted exactly."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data_helpers import (BAD_EXPECTED, BAD_MAX_INSTANCES, coco_config, encode,
                          write_bad_dataset)
from effdet_jax.data import categories, input_pipeline, tfrecord
from effdet_jax.tools import make_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def bad(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('bad'))
  path = write_bad_dataset(root)
  config = coco_config(path, os.path.join(root, 'images'))
  config.data.max_instances_per_image = BAD_MAX_INSTANCES
  return root, config


def test_coco_json_bad_data_counted_exactly(bad):
  _, config = bad
  assert input_pipeline.scan(config) == BAD_EXPECTED


def test_skipped_images_stay_in_the_stream_flagged(bad):
  _, config = bad
  config = copy.deepcopy(config)
  config.train.global_batch_size = 8
  batch = next(input_pipeline.train_data(config, process_index=0, process_count=1)
               .dataset.as_numpy_iterator())
  invalid = sorted(batch['image_id'][~batch['image_valid']].tolist())
  assert invalid == [15, 16]                        # missing and undecodable
  assert batch['images_skipped'].sum(0).tolist() == [1, 1]
  assert (batch['classes'][~batch['image_valid']] == -1).all()
  # Contiguous classes: category 7 is class 1, category 1 class 0.
  gray = batch['image_id'].tolist().index(11)
  assert 1 in batch['classes'][gray]
  # Background-only image kept, with no boxes.
  empty = batch['image_id'].tolist().index(14)
  assert batch['image_valid'][empty] and (batch['classes'][empty] == -1).all()


def test_tfrecords_from_coco_json_read_the_same(bad, tmp_path):
  root, config = bad
  summary = make_tfrecords.make_tfrecords(config.data.train.annotations, config.data.train.images,
                                          str(tmp_path / 'train'), num_shards=3)
  assert summary['images_written'] == 7 and summary['images_missing'] == 1
  info = json.loads((tmp_path / tfrecord.INFO_FILE).read_text())
  assert sum(info['num_records'].values()) == 7 and len(info['categories']) == 2
  config = copy.deepcopy(config)
  config.data.source = 'tfrecord'
  config.data.train.file_pattern = str(tmp_path / 'train-*')
  expected = copy.deepcopy(BAD_EXPECTED)
  # The tool left the missing image (and its 2 boxes) and the orphan annotation out.
  expected['images_skipped']['missing_file'] = 0
  expected['boxes_dropped']['image_skipped'] = 1
  del expected['boxes_dropped']['annotation_without_image']
  assert input_pipeline.scan(config) == expected
  # Without the info file the records are counted and categories must come from the config.
  os.remove(tmp_path / tfrecord.INFO_FILE)
  with pytest.raises(ValueError, match='does not list its categories'):
    input_pipeline.scan(config)
  config.data.categories = config.data.train.annotations
  source = input_pipeline.open_source(config, 'train')
  assert source.num_examples(0, 1) == 7 and source.num_examples(1, 2) == 2


def test_official_tfrecord_without_area_or_crowd(tmp_path):
  example = tf.train.Example(features=tf.train.Features(feature={
      'image/encoded': tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[encode(np.zeros((10, 20, 3), np.uint8), 'JPEG')])),
      'image/source_id': tf.train.Feature(bytes_list=tf.train.BytesList(value=[b'42'])),
      'image/object/bbox/xmin': tf.train.Feature(float_list=tf.train.FloatList(value=[0.1])),
      'image/object/bbox/xmax': tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
      'image/object/bbox/ymin': tf.train.Feature(float_list=tf.train.FloatList(value=[0.2])),
      'image/object/bbox/ymax': tf.train.Feature(float_list=tf.train.FloatList(value=[0.6])),
      'image/object/class/label': tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
  }))
  parsed = tfrecord.parse(tf.constant(example.SerializeToString()))
  assert int(parsed['image_id']) == 42
  np.testing.assert_allclose(parsed['boxes'].numpy(), [[0.2, 0.1, 0.6, 0.5]])
  assert parsed['is_crowd'].numpy().tolist() == [False]
  assert parsed['areas'].numpy().tolist() == [-1.0]


@pytest.mark.parametrize('content, message', [
    ('{"images": [', 'not valid JSON'),
    ('[]', 'expected a JSON object'),
    ('{"annotations": [], "categories": []}', 'no "images" field'),
    ('{"images": [{"id": "a", "file_name": "x.jpg"}], "categories": []}', r'images\[0\].id'),
    ('{"images": [{"id": 1}], "categories": []}', r'images\[0\].file_name'),
    ('{"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 1, "file_name": "y.jpg"}], '
     '"categories": []}', r'images\[1\].id 1 is used by images\[0\]'),
    ('{"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"image_id": 1, '
     '"category_id": 1, "bbox": [1, 2, 3]}], "categories": []}', r'annotations\[0\].bbox'),
    ('{"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"image_id": 1, '
     '"category_id": 1.5, "bbox": [1, 2, 3, 4]}], "categories": []}', r'annotations\[0\].category_id'),
    ('{"images": [{"id": 1, "file_name": "x.jpg", "height": 0}], "categories": []}',
     r'images\[0\].height'),
    ('{"images": [], "categories": [{"name": "a"}]}', r'categories\[0\]'),
])
def test_malformed_annotation_file_names_file_and_field(tmp_path, content, message):
  path = tmp_path / 'ann.json'
  path.write_text(content)
  config = coco_config(str(path), str(tmp_path))
  with pytest.raises(ValueError, match=message) as error:
    input_pipeline.scan(config)
  assert str(path) in str(error.value)


def test_missing_paths_and_too_few_classes(bad, tmp_path):
  _, config = bad
  c = copy.deepcopy(config)
  c.data.train.annotations = str(tmp_path / 'nope.json')
  with pytest.raises(FileNotFoundError, match='nope.json'):
    input_pipeline.open_source(c, 'train')
  c = copy.deepcopy(config)
  c.model.num_classes = 1
  with pytest.raises(ValueError, match='need 2 model classes'):
    input_pipeline.scan(c)
  c = copy.deepcopy(config)
  c.data.source = 'lmdb'
  with pytest.raises(ValueError, match="config.data.source is 'lmdb'"):
    input_pipeline.open_source(c, 'train')


def test_category_map_schemes_and_round_trip(tmp_path):
  cats = [{'id': 90, 'name': 'toothbrush'}, {'id': 1, 'name': 'person'}]
  official = categories.CategoryMap.build(cats, 'id_minus_one')
  assert official.classes == (0, 89) and official.num_classes == 90
  contiguous = categories.CategoryMap.build(cats, 'contiguous')
  assert contiguous.classes == (0, 1) and contiguous.category_ids(3).tolist() == [1, 90, -1]
  contiguous.save(str(tmp_path / categories.FILENAME))
  assert categories.CategoryMap.load(str(tmp_path / categories.FILENAME)) == contiguous
  coco = categories.CategoryMap.coco()
  assert len(coco.ids) == 80 and coco.classes[-1] == 89
  with pytest.raises(ValueError, match='id_minus_one'):
    categories.CategoryMap.build([{'id': 0, 'name': 'bg'}], 'id_minus_one')


def _fake_coco_tfds(num_examples):
  """`_as_dataset` for tfds mock_data: COCO-like examples with real JPEGs."""
  rng = np.random.default_rng(0)
  rows = []
  for i in range(num_examples):
    h, w = 40 + i, 60
    rows.append({
        'image': encode(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), 'JPEG'),
        'image/filename': f'{i}.jpg', 'image/id': 100 + i,
        'objects': {'area': np.array([50, 60], np.int64),
                    'bbox': np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.9, 0.8]], np.float32),
                    'id': np.array([1, 2], np.int64), 'is_crowd': np.array([False, i == 0]),
                    'label': np.array([0, 11], np.int64)}})

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    del self, decoders, read_config, shuffle_files
    selected = rows
    if not isinstance(split, str):   # tfds.even_splits: one host's share
      selected = rows[split.index::split.count]
    spec = {'image': tf.TensorSpec([], tf.string), 'image/filename': tf.TensorSpec([], tf.string),
            'image/id': tf.TensorSpec([], tf.int64),
            'objects': {'area': tf.TensorSpec([None], tf.int64),
                        'bbox': tf.TensorSpec([None, 4], tf.float32),
                        'id': tf.TensorSpec([None], tf.int64),
                        'is_crowd': tf.TensorSpec([None], tf.bool),
                        'label': tf.TensorSpec([None], tf.int64)}}
    return tf.data.Dataset.from_generator(lambda: iter(selected), output_signature=spec).apply(
                tf.data.experimental.assert_cardinality(len(selected)))

  return as_dataset


def test_tfds_coco_labels_map_to_coco_ids_and_hosts_split():
  config = coco_config('', '')
  config.data.source = 'tfds'
  config.data.category_scheme = 'id_minus_one'
  config.model.num_classes = 90
  with tfds.testing.mock_data(as_dataset_fn=_fake_coco_tfds(6)):
    result = input_pipeline.scan(config)
    assert result['images'] == 6 and result['boxes'] == 11
    assert result['boxes_dropped']['crowd'] == 1 and result['categories'] == 80
    batch = next(input_pipeline.train_data(config, process_index=0, process_count=1)
                 .dataset.as_numpy_iterator())
    # TFDS label 11 is COCO's "stop sign", category 13, class 12 with the official layout.
    assert set(batch['classes'][batch['classes'] >= 0].tolist()) <= {0, 12}
    assert 12 in batch['classes']
    ids = [set(input_pipeline.eval_data(config, 4, process_index=p, process_count=2)
               .dataset.unbatch().map(lambda e: e['image_id']).as_numpy_iterator()) - {0}
           for p in range(2)]
    assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == set(range(100, 106))


def test_inspect_tool_prints_the_counts_as_json(bad):
  _, config = bad
  out = subprocess.run(
      [sys.executable, '-m', 'effdet_jax.tools.inspect_dataset',
       '--config', os.path.join(ROOT, 'effdet_jax', 'configs', 'efficientdet.py') + ':d0',
       '--config.data.source=coco_json', '--config.data.category_scheme=contiguous',
       f'--config.data.train.annotations={config.data.train.annotations}',
       f'--config.data.train.images={config.data.train.images}',
       f'--config.data.max_instances_per_image={BAD_MAX_INSTANCES}'],
      cwd=ROOT, capture_output=True, text=True, check=True)
  assert json.loads(out.stdout.strip().splitlines()[-1]) == BAD_EXPECTED
