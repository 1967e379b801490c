"""Export: the bundle and the SavedModel give the predict tool's detections; the
official-layout checkpoint reads back to the trained variables."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import tiny_train_config
from effdet_jax.configs.efficientdet import get_config
from conftest import require_parity
from effdet_jax.data.categories import FILENAME as CATEGORIES_FILE, CategoryMap
from effdet_jax.export import exporter, load_bundle
from effdet_jax.export.bundle import read_bundle_config
from effdet_jax.export.saved_model import OUTPUT_KEYS
from effdet_jax.inference.detector import Detector
from effdet_jax.models import official_checkpoint as official
from effdet_jax.models.variables import abstract_variables, init_variables
from effdet_jax.tools import predict
from effdet_jax.training import checkpoint, optim
from effdet_jax.training.step import create_state
from processes import ROOT, env

SKIMAGE_PHOTOS = ('chelsea.png', 'coffee.png', 'astronaut.png')   # 300x451, 400x600, 512x512
CATEGORIES = [{'id': 3, 'name': 'circle'}, {'id': 7, 'name': 'square'},
              {'id': 10, 'name': 'triangle'}, {'id': 20, 'name': 'star'},
              {'id': 31, 'name': 'cross'}]


def photo_paths(directory):
  """Real photos of three sizes, as JPEG (the common case) and PNG."""
  import skimage  # pylint: disable=g-import-not-at-top
  paths = []
  for i, name in enumerate(SKIMAGE_PHOTOS):
    image = Image.open(os.path.join(os.path.dirname(skimage.__file__), 'data', name)).convert('RGB')
    paths.append(os.path.join(directory, name.replace('.png', '.jpg' if i < 2 else '.png')))
    image.save(paths[-1], quality=90)
  return paths


def run_saved_model(saved_model, paths, output):
  """The SavedModel's outputs for `paths`, computed with TensorFlow alone."""
  subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'run_saved_model.py'), saved_model,
                  str(output), *paths], check=True, env=env(1), cwd=ROOT, timeout=300)
  return dict(np.load(output))


def assert_same_detections(expected, boxes, scores, classes, count, box_atol=0.05):
  n = expected['num_detections']
  assert count == n
  np.testing.assert_array_equal(classes[:n], expected['category_ids'])
  np.testing.assert_allclose(boxes[:n], expected['boxes'], atol=box_atol)
  np.testing.assert_allclose(scores[:n], expected['scores'], atol=1e-4)
  assert (classes[n:] == -1).all() and (boxes[n:] == 0).all() and (scores[n:] == 0).all()


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A training workdir (step 7, EMA weights unlike the raw ones, its own category
  ids) exported to every format, with the photos and the Detector's detections."""
  root = tmp_path_factory.mktemp('export')
  config = tiny_train_config.get_config(str(root / 'data'))
  config.postprocess.max_detections = 20
  variables = init_variables(config, jax.random.PRNGKey(0))
  head = variables['params']['class_net']['class-predict']
  head['pointwise_kernel'] = head['pointwise_kernel'] * 1e4   # spread the scores (see test_evaluate)
  layout = optim.ParamLayout(jax.eval_shape(lambda: variables))
  state = create_state(variables, layout, config)
  state = state.replace(params=state.params * 0.5, momentum=state.momentum + 1.0)
  workdir = str(root / 'run')
  ckpts = checkpoint.TrainCheckpoints(workdir, keep=2)
  ckpts.save(7, state)
  ckpts.wait()
  ckpts.close()
  categories = CategoryMap.build(CATEGORIES, 'contiguous')
  categories.save(os.path.join(workdir, CATEGORIES_FILE))
  output = str(root / 'exported')
  summary = exporter.export(config, workdir, output, batch_size=2)
  paths = photo_paths(str(root))
  detector = Detector(config, variables, category_ids=categories.category_ids(5))
  expected = detector([predict.load_image(p) for p in paths])
  return config, variables, workdir, output, summary, paths, expected


def test_export_writes_both_formats_from_the_latest_checkpoint(trained):
  _, _, workdir, output, summary, _, _ = trained
  assert summary['step'] == 7 and summary['categories'] == 5
  assert json.load(open(os.path.join(output, exporter.SUMMARY_FILE))) == summary
  assert summary['saved_model']['platforms'] == ['cpu']
  assert summary['saved_model']['bytes'] > 0 and summary['bundle']['bytes'] > 0
  assert sorted(os.listdir(os.path.join(output, 'bundle'))) == [
      'bundle.json', 'categories.json', 'config.json', 'variables']
  assert os.path.isfile(os.path.join(output, 'saved_model', 'saved_model.pb'))
  assert sorted(os.listdir(os.path.join(output, 'tflite'))) == ['categories.json', 'model.tflite']
  assert summary['tflite']['quantize'] == 'none' and summary['tflite']['bytes'] > 0


def test_tf_checkpoint_reads_back_raw_and_ema_weights(trained):
  """The official layout, read by the official-checkpoint converter: the raw
  (trained) weights under the official names, the EMA ones under
  `/ExponentialMovingAverage`, and the step."""
  config, variables, _, output, summary, _, _ = trained
  path = os.path.join(output, exporter.TF_CHECKPOINT_DIR)
  assert summary['tf_checkpoint']['ema'] and summary['tf_checkpoint']['bytes'] > 0
  raw = official.load_official_checkpoint(path, config, use_ema=False)
  ema = official.load_official_checkpoint(path, config, use_ema=True)
  halved = jax.tree.map(lambda v: v * 0.5, variables['params'])   # the fixture's raw weights
  for got, want in ((raw['params'], halved), (ema['params'], variables['params']),
                    (raw['batch_stats'], variables['batch_stats']),
                    (ema['batch_stats'], variables['batch_stats'])):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
  assert int(official.read_checkpoint(official.resolve_checkpoint(path))['global_step']) == 7


def test_tf_checkpoint_names_are_the_released_ones():
  """D0's names and shapes equal those of the official-layout reference checkpoint."""
  from effdet_jax.export import tf_checkpoint  # pylint: disable=g-import-not-at-top
  names = os.path.join(require_parity(), 'names.txt')
  want = dict(line.rstrip('\n').split('\t') for line in open(names))
  config = get_config('d0')
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), abstract_variables(config))
  tensors = tf_checkpoint.official_tensors(config, zeros, zeros, step=3)
  assert {k: str(list(v.shape)).replace(' ', '') for k, v in tensors.items()} == {
      k: v.replace(' ', '') for k, v in want.items()}


def test_saved_model_gives_the_detectors_detections_without_jax(trained, tmp_path):
  """Three photos of three sizes through both signatures, in a process that cannot
  import JAX; the module's batch of 2 leaves the last chunk of 3 padded."""
  _, _, _, output, _, paths, expected = trained
  out = run_saved_model(os.path.join(output, 'saved_model'), paths, tmp_path / 'out.npz')
  assert list(out['inputs/serving_default']) == [-1, -1, -1, 3]
  assert list(out['inputs/serving_encoded']) == [-1]
  for signature in ('serving_default', 'serving_encoded'):
    assert out[f'{signature}/detection_classes'].dtype == np.int64
    assert out[f'{signature}/detection_boxes'].shape == (3, 20, 4)
    for i, e in enumerate(expected):
      assert e['num_detections'] > 0
      assert_same_detections(e, *(out[f'{signature}/{k}'][i] for k in OUTPUT_KEYS))


def test_benchmark_times_the_saved_model(trained):
  output = trained[3]
  out = subprocess.run([sys.executable, '-m', 'effdet_jax.tools.benchmark', '--mode', 'saved_model',
                        '--saved_model', os.path.join(output, 'saved_model'), '--batch_size', '2',
                        '--repeats', '2', '--warmup', '1', '--json'],
                       cwd=ROOT, env=env(1), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['mode'] == 'saved_model' and result['batch_size'] == 2
  assert result['image_size'] == list(trained[0].model.image_size)   # the model's input size
  assert result['images_per_sec'] > 0 and result['load_s'] > 0
  assert result['compile_s'] == pytest.approx(result['first_call_s'], abs=0.01)   # TF traces then


def test_benchmark_times_the_tflite_model(trained):
  from effdet_jax.tools import benchmark
  config, _, _, _, summary, _, _ = trained
  result = benchmark.benchmark_tflite(summary['tflite']['path'], repeats=2, warmup=1, threads=1)
  assert result['mode'] == 'tflite' and result['threads'] == 1
  assert result['image_size'] == list(config.model.image_size) and result['input_dtype'] == 'float32'
  assert result['images_per_sec'] > 0 and result['bytes'] == summary['tflite']['bytes']


def test_bundle_loads_into_the_detector_with_ema_weights_and_categories(trained, tmp_path):
  config, variables, _, output, _, paths, expected = trained
  bundle = os.path.join(output, 'bundle')
  detector = load_bundle(bundle, batch_size=2)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(detector.variables), variables)
  assert read_bundle_config(bundle).model.to_dict() == json.loads(config.model.to_json())
  for got, e in zip(detector([predict.load_image(p) for p in paths]), expected):
    assert_same_detections(e, got['boxes'], got['scores'], got['category_ids'],
                           got['num_detections'], box_atol=1e-4)
  entries = predict.detect_files(detector, paths[:1], str(tmp_path / 'p.json'))
  names = {c['id']: c['name'] for c in CATEGORIES}
  assert [d['label'] for d in entries[0]['detections']] == [
      names[d['category_id']] for d in entries[0]['detections']]


def test_static_batch_fixed_size_and_all_platforms(trained, tmp_path):
  """`--static_batch --image_size 300x451 --platforms cpu,cuda,tpu`: the module is
  lowered for every platform and still runs here."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  config, _, workdir, _, _, paths, expected = trained
  summary = exporter.export(config, workdir, str(tmp_path), ['saved_model'], batch_size=1,
                            static_batch=True, image_size=(300, 451),
                            platforms=['cpu', 'cuda', 'tpu'])
  assert summary['saved_model']['platforms'] == ['cpu', 'cuda', 'tpu'] and 'bundle' not in summary
  model = tf.saved_model.load(os.path.join(tmp_path, 'saved_model'))
  spec = model.signatures['serving_default'].structured_input_signature[1]['images']
  assert spec.shape.as_list() == [1, 300, 451, 3]
  out = model.signatures['serving_default'](images=tf.constant(predict.load_image(paths[0])[None]))
  assert_same_detections(expected[0], *(out[k][0].numpy() for k in OUTPUT_KEYS))
  for shape in ([2, 300, 451, 3], [1, 300, 450, 3]):
    with pytest.raises(tf.errors.InvalidArgumentError, match='shape'):
      model.signatures['serving_default'](images=tf.zeros(shape, tf.uint8))


def test_bad_inputs_are_named(trained, tmp_path):
  config, variables, workdir, _, _, _, _ = trained
  with pytest.raises(ValueError, match='unsupported export format'):
    exporter.export(config, workdir, str(tmp_path), ['onnx'])
  with pytest.raises((FileNotFoundError, ValueError), match='absent'):
    exporter.export(config, str(tmp_path / 'absent'), str(tmp_path / 'out'))
  wider = tiny_train_config.get_config()
  wider.model.fpn_num_filters = 24
  with pytest.raises(ValueError, match='needs'):
    exporter.export(wider, workdir, str(tmp_path / 'out'))
  converted = str(tmp_path / 'converted')        # no categories.json, 5 classes: which ids?
  checkpoint.save_variables(converted, variables, config)
  with pytest.raises(ValueError, match='--categories'):
    exporter.export(config, converted, str(tmp_path / 'out'))
  with pytest.raises(FileNotFoundError, match='not an inference bundle'):
    load_bundle(converted)
  with pytest.raises(ValueError, match='model classes'):
    exporter.categories_for(config, converted, None, _write_categories(tmp_path, 9))


def _write_categories(directory, count):
  path = os.path.join(directory, 'many.json')
  json.dump({'categories': [{'id': i, 'name': f'c{i}'} for i in range(1, count + 1)]},
            open(path, 'w'))
  return path


@pytest.mark.slow
def test_official_d0_exports_and_matches_the_predict_tool(tmp_path):
  """`python -m effdet_jax.export` on the official-layout D0 checkpoint: the
  SavedModel (TF alone) gives the predict tool's detections. (The bundle is
  checked against the Detector above.)"""
  parity = require_parity()
  ckpt = os.path.join(parity, 'ckpt')
  output = tmp_path / 'd0'
  subprocess.run([sys.executable, '-m', 'effdet_jax.export', '--config',
                  'effdet_jax/configs/efficientdet.py:d0', '--checkpoint', ckpt, '--output', str(output)],
                 check=True, env=env(1), cwd=ROOT, timeout=600)
  paths = photo_paths(str(tmp_path))
  expected = predict.predict(get_config('d0'), ckpt, paths, str(tmp_path / 'predict.json'))
  out = run_saved_model(str(output / 'saved_model'), paths, tmp_path / 'out.npz')
  assert os.path.isfile(output / 'bundle' / 'bundle.json')
  for i, entry in enumerate(expected):
    reference = {'num_detections': len(entry['detections']),
                 'boxes': np.array([d['box'] for d in entry['detections']]),
                 'scores': np.array([d['score'] for d in entry['detections']]),
                 'category_ids': np.array([d['category_id'] for d in entry['detections']])}
    # The predict tool's JSON rounds boxes to 1e-3 px and scores to 1e-6.
    for signature in ('serving_default', 'serving_encoded'):
      assert_same_detections(reference, *(out[f'{signature}/{k}'][i] for k in OUTPUT_KEYS))
