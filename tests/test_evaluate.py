"""COCO evaluation: pycocotools' own numbers, every image once, across hosts and sources."""
import copy
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import tiny_train_config
from effdet_jax.configs.efficientdet import get_config
from conftest import require_parity
from effdet_jax.data.coco_labels import COCO_NAMES
from effdet_jax.inference import evaluate
from effdet_jax.inference.detector import Detector
from effdet_jax.models.variables import init_variables
from effdet_jax.runtime import parallel
from effdet_jax.tools import make_tfrecords, predict
from effdet_jax.training import checkpoint, evaluation
from effdet_jax.training.metrics_writer import create_writer, read_metrics
from processes import ROOT, env, free_port


def _ground_truth_dict():
  """Three images: boxes of all sizes, a crowd box, and an image with no boxes."""
  images = [{'id': 11, 'height': 480, 'width': 640, 'file_name': 'a.jpg'},
            {'id': 12, 'height': 300, 'width': 300, 'file_name': 'b.jpg'},
            {'id': 13, 'height': 200, 'width': 400, 'file_name': 'c.jpg'}]
  boxes = [(11, 1, [10, 20, 20, 15]), (11, 2, [100, 100, 80, 60]), (11, 1, [200, 50, 300, 400]),
           (12, 2, [5, 5, 40, 40]), (12, 1, [150, 120, 100, 150])]
  annotations = [{'id': i + 1, 'image_id': image, 'category_id': c, 'bbox': b,
                  'area': float(b[2] * b[3]), 'iscrowd': 0} for i, (image, c, b) in enumerate(boxes)]
  annotations.append({'id': 99, 'image_id': 12, 'category_id': 1, 'bbox': [0, 200, 100, 90],
                      'area': 9000.0, 'iscrowd': 1})
  return {'images': images, 'annotations': annotations,
          'categories': [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]}


def test_ground_truth_as_detections_scores_one(tmp_path):
  dataset = _ground_truth_dict()
  path = tmp_path / 'gt.json'
  path.write_text(json.dumps(dataset))
  results = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'bbox': a['bbox'],
              'score': 1.0} for a in dataset['annotations'] if not a['iscrowd']]
  metrics = evaluate.coco_metrics(evaluate.read_ground_truth(str(path)), results)
  assert set(metrics) == set(evaluate.COCO_METRICS)
  for name in ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR100'):
    assert metrics[name] == pytest.approx(1.0), name
  assert evaluate.coco_metrics(evaluate.read_ground_truth(str(path)), [])['AP'] == 0.0


def test_metrics_are_exactly_pycocotools_on_a_detections_file(tmp_path):
  dataset = _ground_truth_dict()
  gt_path, dt_path = tmp_path / 'gt.json', tmp_path / 'dt.json'
  gt_path.write_text(json.dumps(dataset))
  rng = np.random.default_rng(3)
  results = []
  for a in dataset['annotations']:
    for _ in range(3):
      box = (np.asarray(a['bbox']) + rng.normal(0, 0.1 * a['bbox'][2], 4)).round(2).tolist()
      results.append({'image_id': a['image_id'], 'category_id': int(rng.integers(1, 3)),
                      'bbox': box, 'score': round(float(rng.random()), 4)})
  dt_path.write_text(json.dumps(results))
  ours = evaluate.coco_metrics(evaluate.read_ground_truth(str(gt_path)),
                               json.loads(dt_path.read_text()))
  gt = COCO(str(gt_path))
  direct = COCOeval(gt, gt.loadRes(str(dt_path)), 'bbox')
  direct.evaluate()
  direct.accumulate()
  direct.summarize()
  assert [ours[k] for k in evaluate.COCO_METRICS] == direct.stats[:9].tolist()


def test_bad_annotation_file_is_named(tmp_path):
  path = tmp_path / 'gt.json'
  path.write_text('{"images": []}')
  with pytest.raises(ValueError, match=r'gt.json: .*"annotations" list'):
    evaluate.read_ground_truth(str(path))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """The tiny model (random weights) on a validation set of 7 images: ids out of
  order, two without boxes, one whose file is missing; batches of 4 leave the
  last one padded."""
  root = str(tmp_path_factory.mktemp('tiny_eval'))
  tiny_train_config.write_data(root)
  config = tiny_train_config.get_config(root)
  annotations = json.load(open(config.data.val.annotations))
  first = annotations['images'][:6]
  new_id = {image['id']: n for image, n in zip(first, (40, 7, 23, 5, 300, 12))}
  images = [dict(image, id=new_id[image['id']]) for image in first]
  boxes = [dict(a, image_id=new_id[a['image_id']]) for a in annotations['annotations']
           if new_id.get(a['image_id']) not in (None, 7, 300)]
  images.append(dict(images[0], id=8, file_name='missing.jpg'))
  boxes.append(dict(boxes[0], id=10**6, image_id=8))
  annotations.update(images=images, annotations=boxes)
  path = os.path.join(root, 'val_edited.json')
  json.dump(annotations, open(path, 'w'))
  config.data.val.annotations = path
  config.eval.global_batch_size = 4
  config.eval.num_images_to_draw = 2
  variables = init_variables(config, jax.random.PRNGKey(0))
  # Random features are tiny (logits within 1e-4 of the prior): spread them, so that
  # scores rarely tie and soft-NMS's order is not float noise.
  head = variables['params']['class_net']['class-predict']
  head['pointwise_kernel'] = head['pointwise_kernel'] * 1e4
  mesh = parallel.create_mesh()
  evaluator = evaluate.Evaluator(config, mesh)
  result = evaluator(parallel.replicate(variables, mesh))
  return config, variables, evaluator, result, root


def test_every_image_once_with_skipped_and_empty_ones(tiny):
  config, _, evaluator, result, _ = tiny
  assert evaluator.data.num_batches == 2
  assert result.num_images == 6 and result.images_skipped == 1
  per_image = {}
  for r in result.results:
    per_image[r['image_id']] = per_image.get(r['image_id'], 0) + 1
    assert r['category_id'] in range(1, 6) and len(r['bbox']) == 4
  # Random weights score everything above the threshold: 100 detections on each image.
  assert per_image == {i: config.postprocess.max_detections for i in (40, 7, 23, 5, 300, 12)}
  assert set(result.metrics) == set(evaluate.COCO_METRICS)
  assert len(result.samples) == 2 and result.samples[0].dtype == np.uint8
  assert max(result.samples[0].shape[:2]) == 64 and result.samples[0].shape[2] == 3  # input pixels


def test_detections_are_the_detectors(tiny):
  """Same boxes, scores and classes as `Detector` (the predict tool) with per-class NMS."""
  config, variables, evaluator, result, root = tiny
  names = {i['id']: i['file_name'] for i in json.load(open(config.data.val.annotations))['images']}
  detector = Detector(config, variables, per_class=True,
                      category_ids=evaluator.category_ids)
  for image_id in (40, 5):
    image = predict.load_image(os.path.join(config.data.val.images, names[image_id]))
    expected = detector([image])[0]
    got = [(r['category_id'], *r['bbox'], r['score']) for r in result.results
           if r['image_id'] == image_id]
    want = [(c, *b, s) for c, b, s in zip(expected['category_ids'].tolist(),
                                          evaluate._xywh(expected['boxes']).tolist(),
                                          expected['scores'].tolist())]
    # Which near-ties make the cut at 100 detections is float noise: each of the
    # detector's best 80 is among the evaluation's 100, with its class, box and score.
    got = np.array(got)
    for row in sorted(want, key=lambda r: -r[5])[:80]:
      same = (got[:, 0] == row[0]) & np.all(np.abs(got[:, 1:5] - row[1:5]) < 2e-3, axis=1)
      assert same.sum() == 1, row
      assert got[same, 5][0] == pytest.approx(row[5], abs=1e-4)


def test_written_results_reproduce_the_metrics(tiny, tmp_path):
  config, _, _, result, _ = tiny
  writer = create_writer(str(tmp_path), resume_step=None)
  evaluate.write(result, 7, str(tmp_path), writer)
  writer.close()
  saved = json.load(open(tmp_path / 'eval' / 'detections_7.json'))
  assert saved == result.results
  gt = evaluate.read_ground_truth(config.data.val.annotations)
  assert evaluate.coco_metrics(gt, saved, [40, 7, 23, 5, 300, 12]) == result.metrics
  row = read_metrics(str(tmp_path))[-1]
  assert row['step'] == 7 and row['AP'] == result.metrics['AP'] and row['eval_images'] == 6
  assert row['eval_images_skipped'] == 1
  assert os.listdir(tmp_path / 'tensorboard')


def test_ground_truth_built_from_tfrecords_gives_the_same_numbers(tiny, tmp_path):
  config, variables, _, result, _ = tiny
  make_tfrecords.make_tfrecords(config.data.val.annotations, config.data.val.images,
                                str(tmp_path / 'val'), num_shards=1)
  config = copy.deepcopy(config)
  config.data.source = 'tfrecord'
  config.data.val.file_pattern = str(tmp_path / 'val-*')
  mesh = parallel.create_mesh()
  other = evaluate.Evaluator(config, mesh)
  assert other.annotations == ''
  again = other(parallel.replicate(variables, mesh))
  assert again.num_images == 6
  assert sorted(again.results, key=json.dumps) == sorted(result.results, key=json.dumps)
  for name in evaluate.COCO_METRICS:
    assert again.metrics[name] == pytest.approx(result.metrics[name], abs=1e-6), name


def test_missing_checkpoint_is_explained(tmp_path):
  config = tiny_train_config.get_config()
  with pytest.raises(FileNotFoundError, match='no training checkpoint in .*checkpoints'):
    evaluation.load_variables(config, str(tmp_path), '', parallel.create_mesh())


@pytest.mark.slow
def test_two_hosts_give_the_numbers_of_one(tiny, tmp_path):
  config, variables, _, _, root = tiny
  weights = str(tmp_path / 'weights')
  checkpoint.save_variables(weights, variables, config)
  flags = ['--mode=eval', f'--checkpoint={weights}',
           f'--config.data.val.annotations={config.data.val.annotations}',
           '--config.eval.global_batch_size=4']
  command = [sys.executable, '-m', 'effdet_jax.main', '--config',
             f'{os.path.join(ROOT, "tests", "tiny_train_config.py")}:{root}', *flags]
  one = str(tmp_path / 'one')
  out = subprocess.run(command + ['--workdir', one], cwd=ROOT, env=env(2), capture_output=True,
                       text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  two = str(tmp_path / 'two')
  port = free_port()
  procs = [subprocess.Popen(
      command + ['--workdir', two, f'--coordinator_address=localhost:{port}', '--num_processes=2',
                 f'--process_id={i}', '--cpu_collectives=gloo'],
      cwd=ROOT, env=env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errors = [p.communicate(timeout=600)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
  scores = lambda d: [{k: v for k, v in row.items() if k != 'eval_images_per_sec'}
                      for row in read_metrics(d)]
  assert scores(two) == scores(one)
  assert scores(one)[0]['eval_images'] == 6
  # The hosts interleave images differently; each image's detections are the same.
  detections = lambda d: sorted(json.load(open(os.path.join(d, 'eval', 'detections_0.json'))),
                                key=lambda r: r['image_id'])
  assert detections(two) == detections(one)


@pytest.mark.slow
def test_official_d0_checkpoint_evaluates_like_the_predict_tool(tmp_path):
  """Three photos (two 512x512, one 300x451), batches of 2: the detections file
  holds the predict tool's per-class detections of each image."""
  parity = require_parity()
  photos = list(np.load(os.path.join(parity, 'input.npy')))
  photos.append(np.asarray(Image.open(os.path.join(os.path.dirname(__import__('skimage').__file__),
                                                   'data', 'chelsea.png')).convert('RGB')))
  images, annotations, paths = [], [], []
  for i, photo in enumerate(photos):
    paths.append(str(tmp_path / f'photo_{i}.png'))
    Image.fromarray(photo).save(paths[-1])
    height, width = photo.shape[:2]
    images.append({'id': i + 1, 'file_name': os.path.basename(paths[-1]), 'height': height,
                   'width': width})
    annotations.append({'id': i + 1, 'image_id': i + 1, 'category_id': 17, 'iscrowd': 0,
                        'bbox': [width / 4, height / 4, width / 2, height / 2],
                        'area': width * height / 4})
  gt = tmp_path / 'gt.json'
  gt.write_text(json.dumps({'images': images, 'annotations': annotations,
                            'categories': [{'id': 1, 'name': 'person'}, {'id': 17, 'name': 'cat'}]}))
  config = get_config('d0')
  config.data.source = 'coco_json'
  config.data.categories = 'coco'
  config.data.val.annotations = str(gt)
  config.data.val.images = str(tmp_path)
  config.eval.global_batch_size = 2
  workdir = str(tmp_path / 'workdir')
  step, result = evaluation.evaluate_checkpoint(config, workdir, os.path.join(parity, 'ckpt'))
  assert step == 0
  assert result.num_images == 3
  assert read_metrics(workdir)[-1]['step'] == 0
  entries = predict.predict(config, os.path.join(parity, 'ckpt'), paths, str(tmp_path / 'p.json'),
                            per_class=True)
  saved = json.load(open(os.path.join(workdir, 'eval', 'detections_0.json')))
  for i, entry in enumerate(entries):
    got = sorted((r for r in saved if r['image_id'] == i + 1), key=lambda r: -r['score'])
    # Random weights also detect the 10 ids COCO leaves unused, which evaluation leaves out.
    want = sorted((d for d in entry['detections'] if d['category_id'] in COCO_NAMES),
                  key=lambda d: -d['score'])
    assert len(got) == len(want) > 0
    # Ranks past 50 may swap where scores tie to 1e-4 (image 0 is ill-conditioned, see test_predict).
    got, want = got[:50], want[:50]
    np.testing.assert_allclose([r['score'] for r in got], [d['score'] for d in want], atol=2.5e-4)
    np.testing.assert_allclose([r['bbox'] for r in got],
                               evaluate._xywh(np.array([d['box'] for d in want])), atol=0.15)
    assert [r['category_id'] for r in got] == [d['category_id'] for d in want]
