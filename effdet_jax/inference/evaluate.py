"""COCO evaluation: the network and per-class soft-NMS on every device of every
host, the detections gathered to process 0 and scored once by pycocotools.

Each host reads its share of the split (`input_pipeline.eval_data` pads every
host to the same number of batches). The jitted step returns the detections
and each image's fields (id, scale, ground truth) replicated, so process 0 sees
every image of the split exactly once, the padding marked `image_valid=False`.
Boxes leave the step in original-image pixels; classes become the dataset's
category ids through the run's category map.
"""
import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import tensorflow as tf

from effdet_jax.data import input_pipeline
from effdet_jax.inference import progress, visualize
from effdet_jax.inference.detector import detection_fn
from effdet_jax.models import image_hw, inference
from effdet_jax.runtime import parallel

COCO_METRICS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100')
EVAL_DIR = 'eval'
_ID_BITS = 31   # image ids travel as two int32 halves (JAX arrays are 32-bit)


def coco_from_dataset(dataset: Dict) -> COCO:
  """A pycocotools `COCO` from an annotation dict, without its prints."""
  coco = COCO()
  coco.dataset = dataset
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def read_ground_truth(path: str) -> COCO:
  """A COCO annotation file (local or gs://)."""
  with tf.io.gfile.GFile(path) as f:
    try:
      dataset = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not a JSON file ({e})') from e
  for field in ('images', 'annotations', 'categories'):
    if not isinstance(dataset.get(field), list):
      raise ValueError(f'{path}: expected a COCO annotation file with a "{field}" list')
  return coco_from_dataset(dataset)


def coco_metrics(ground_truth: COCO, results: Sequence[Dict],
                 image_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
  """pycocotools' bbox AP/AR of `results` (COCO results format) over `image_ids`
  (default: every image of the ground truth). -1 where the ground truth has no
  box of that size, as pycocotools reports it."""
  if results:
    with contextlib.redirect_stdout(io.StringIO()):
      detections = ground_truth.loadRes(copy.deepcopy(list(results)))   # loadRes edits its input
  else:
    detections = coco_from_dataset({'images': ground_truth.dataset['images'], 'annotations': [],
                                    'categories': ground_truth.dataset.get('categories', [])})
  evaluation = COCOeval(ground_truth, detections, 'bbox')
  if image_ids is not None:
    evaluation.params.imgIds = sorted(set(int(i) for i in image_ids))
  summary = io.StringIO()
  with contextlib.redirect_stdout(summary):
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  logging.info('pycocotools:\n%s', summary.getvalue().rstrip())
  return {k: float(v) for k, v in zip(COCO_METRICS, evaluation.stats)}


def _xywh(boxes: np.ndarray) -> np.ndarray:
  """[ymin, xmin, ymax, xmax] -> COCO's [x, y, width, height]."""
  return np.stack([boxes[..., 1], boxes[..., 0], boxes[..., 3] - boxes[..., 1],
                   boxes[..., 2] - boxes[..., 0]], axis=-1)


@dataclasses.dataclass
class EvalResult:
  """Everything but `num_images`/`images_skipped`/`seconds` is filled on process 0 only."""
  metrics: Dict[str, float]
  results: List[Dict]            # COCO results format, dataset category ids
  num_images: int
  images_skipped: int            # unreadable images, left out of the score
  seconds: float                 # reading, network, gathering and scoring; not compiling
  compile_seconds: float         # 0 after the first call
  samples: List[np.ndarray]      # validation images with ground truth and detections drawn


def make_eval_step(config: ml_collections.ConfigDict):
  """`(variables, device batch) -> (detections, the batch without its images)`: the
  `Detector`'s function with evaluation's NMS setting (`postprocess.eval_per_class`)."""
  detect = detection_fn(config, config.postprocess.eval_per_class)

  def step(variables, batch):
    batch = dict(batch)
    detections = detect(variables, batch.pop('image'), batch['image_scale'])
    return detections._asdict(), batch

  return step


def jit_eval_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """The step as evaluation runs it: inputs as given (weights replicated, the batch
  split over `data`), outputs gathered everywhere for scoring on the host."""
  return jax.jit(make_eval_step(config), out_shardings=parallel.replicated(mesh),
                 compiler_options=inference.compiler_options())


def eval_batch_spec(config: ml_collections.ConfigDict,
                    batch_size: int) -> Dict[str, jax.ShapeDtypeStruct]:
  """The device batch the step takes (what `Evaluator._device_batch` makes)."""
  height, width = image_hw(config)
  m = config.data.max_instances_per_image
  spec = lambda shape, dtype: jax.ShapeDtypeStruct((batch_size, *shape), dtype)
  return {'image': spec((height, width, 3), jnp.float32), 'image_scale': spec((), jnp.float32),
          'image_id_high': spec((), jnp.int32), 'image_id_low': spec((), jnp.int32),
          'image_valid': spec((), jnp.bool_), 'images_skipped': spec((), jnp.int32),
          'original_size': spec((2,), jnp.int32), 'gt_boxes': spec((m, 4), jnp.float32),
          'gt_category_ids': spec((m,), jnp.int32), 'gt_is_crowd': spec((m,), jnp.bool_),
          'gt_areas': spec((m,), jnp.float32)}


class Evaluator:
  """Built once (the input pipeline and the jitted step), called per set of weights."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    e = config.eval
    if e.global_batch_size % mesh.shape['data']:
      raise ValueError(f'config.eval.global_batch_size={e.global_batch_size} does not divide by '
                       f'the {mesh.shape["data"]} devices of the data axis')
    self.config = config
    self.data = input_pipeline.eval_data(config, e.global_batch_size, e.split)
    self.category_ids = self.data.categories.category_ids(config.model.num_classes)
    self.names = dict(zip(self.data.categories.ids, self.data.categories.names))
    annotations = e.annotations or (config.data[e.split].annotations
                                    if config.data.source == 'coco_json' else '')
    self.annotations = annotations
    self._ground_truth = None
    if annotations and jax.process_index() == 0:
      self._ground_truth = read_ground_truth(annotations)
    self._sharding = parallel.batch_sharding(mesh)
    self._step = jit_eval_step(config, mesh)
    self._compiled = None

  def _device_batch(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    image_id = batch['image_id'].astype(np.int64)
    if np.any(image_id < 0) or np.any(image_id >= 2**(2 * _ID_BITS)):
      raise ValueError(f'image ids must be in [0, 2^62); got {image_id.min()}..{image_id.max()}')
    return {'image': batch['image'], 'image_scale': batch['image_scale'].astype(np.float32),
            'image_id_high': (image_id >> _ID_BITS).astype(np.int32),
            'image_id_low': (image_id & (2**_ID_BITS - 1)).astype(np.int32),
            'image_valid': batch['image_valid'],
            'images_skipped': batch['images_skipped'].astype(np.int32),
            'original_size': batch['original_size'].astype(np.int32),
            'gt_boxes': batch['gt_boxes'].astype(np.float32),
            'gt_category_ids': batch['gt_category_ids'].astype(np.int32),
            'gt_is_crowd': batch['gt_is_crowd'], 'gt_areas': batch['gt_areas'].astype(np.float32)}

  def __call__(self, variables) -> EvalResult:
    """`variables` (`{'params', 'batch_stats'}`, replicated over the mesh) -> the COCO numbers."""
    start, compile_seconds = time.time(), 0.0
    outputs, to_draw = [], []
    report = progress.EvalProgress(self.data.num_batches, self.config.eval.global_batch_size)
    for batch in self.data.dataset.as_numpy_iterator():
      inputs = parallel.to_global(self._device_batch(batch), self._sharding)
      if self._compiled is None:
        compiling = time.time()
        self._compiled = self._step.lower(variables, inputs).compile()
        compile_seconds = time.time() - compiling
      outputs.append(self._compiled(variables, inputs))
      if jax.process_index() == 0:
        report.update(len(outputs), outputs[-1])
      if jax.process_index() == 0:
        to_draw.extend(self._keep_for_drawing(batch, self.config.eval.num_images_to_draw
                                              - len(to_draw)))
    detections, fields = jax.tree.map(lambda *x: np.concatenate(x), *jax.device_get(outputs))
    valid = fields['image_valid']
    num_images = int(valid.sum())
    images_skipped = int((~valid & (fields['images_skipped'].sum(axis=1) > 0)).sum())
    seconds = time.time() - start - compile_seconds
    if jax.process_index() != 0:
      return EvalResult({}, [], num_images, images_skipped, seconds, compile_seconds, [])
    image_ids = (fields['image_id_high'].astype(np.int64) << _ID_BITS) | fields['image_id_low']
    ids, counts = np.unique(image_ids[valid], return_counts=True)
    if np.any(counts > 1):
      raise ValueError(f'image ids {ids[counts > 1][:10].tolist()} appear more than once in the '
                       f'{self.config.eval.split} split: COCO evaluation needs unique ids')
    results = self._results(detections, image_ids, valid)
    ground_truth = (self._ground_truth if self._ground_truth is not None
                    else self._ground_truth_from(fields, image_ids, valid))
    known = set(ground_truth.getImgIds())
    unknown = [int(i) for i in ids if int(i) not in known]
    if unknown:
      raise ValueError(f'{len(unknown)} evaluated images are not in the ground truth '
                       f'{self.annotations or "(built from the dataset)"}, e.g. ids {unknown[:5]}')
    metrics = coco_metrics(ground_truth, results, ids)
    by_id = dict(zip(image_ids.tolist(), range(len(image_ids))))
    samples = [self._draw(image, gt_boxes, scale, detections, by_id[image_id])
               for image, image_id, gt_boxes, scale in to_draw]
    return EvalResult(metrics, results, num_images, images_skipped,
                      time.time() - start - compile_seconds, compile_seconds, samples)

  def _results(self, detections, image_ids, valid) -> List[Dict]:
    rows, cols = np.nonzero(valid[:, None] & (np.arange(detections['scores'].shape[1])
                                              < detections['num_valid'][:, None]))
    category = self.category_ids[detections['classes'][rows, cols]]
    known = category >= 0
    if not known.all():
      logging.warning('%d detections of model classes that no category uses were left out',
                      int((~known).sum()))
    rows, cols, category = rows[known], cols[known], category[known]
    boxes = np.round(_xywh(detections['boxes'][rows, cols]).astype(np.float64), 3)
    scores = np.round(detections['scores'][rows, cols].astype(np.float64), 6)
    return [{'image_id': int(i), 'category_id': int(c), 'bbox': b.tolist(), 'score': float(s)}
            for i, c, b, s in zip(image_ids[rows], category, boxes, scores)]

  def _ground_truth_from(self, fields, image_ids, valid) -> COCO:
    """What the dataset holds (crowd boxes kept), for sources without an annotation file."""
    images, annotations = [], []
    for i in np.flatnonzero(valid):
      images.append({'id': int(image_ids[i]), 'height': int(fields['original_size'][i, 0]),
                     'width': int(fields['original_size'][i, 1])})
      for j in np.flatnonzero(fields['gt_category_ids'][i] >= 0):
        box = _xywh(fields['gt_boxes'][i, j].astype(np.float64))
        area = float(fields['gt_areas'][i, j]) or float(box[2] * box[3])
        annotations.append({'id': len(annotations) + 1, 'image_id': int(image_ids[i]),
                            'category_id': int(fields['gt_category_ids'][i, j]),
                            'bbox': box.tolist(), 'area': area,
                            'iscrowd': int(fields['gt_is_crowd'][i, j])})
    categories = [{'id': int(i), 'name': n} for i, n in self.names.items()]
    return coco_from_dataset({'images': images, 'annotations': annotations,
                              'categories': categories})

  def _keep_for_drawing(self, batch, count: int):
    """This host's first valid images in model-input pixels, with their ids, ground
    truth (in those pixels) and scales."""
    kept = []
    mean = np.float32(self.config.model.mean_rgb)
    std = np.float32(self.config.model.stddev_rgb)
    for i in np.flatnonzero(batch['image_valid'])[:max(count, 0)]:
      scale = float(batch['image_scale'][i])
      height, width = (np.round(batch['original_size'][i] / scale)).astype(int)
      pixels = batch['image'][i, :height, :width].astype(np.float32) * std + mean
      gt = batch['gt_boxes'][i][batch['gt_category_ids'][i] >= 0] / scale
      kept.append((np.clip(np.round(pixels), 0, 255).astype(np.uint8), int(batch['image_id'][i]),
                   gt, scale))
    return kept

  def _draw(self, image, gt_boxes, scale, detections, row) -> np.ndarray:
    entries = []
    for j in range(int(detections['num_valid'][row])):
      category = int(self.category_ids[detections['classes'][row, j]])
      entries.append({'box': (detections['boxes'][row, j] / scale).tolist(),
                      'score': float(detections['scores'][row, j]), 'category_id': category,
                      'label': self.names.get(category, str(category))})
    return visualize.draw_boxes(image, entries, self.config.eval.draw_min_score, gt_boxes.tolist())


def write(result: EvalResult, step: int, workdir: str, writer) -> None:
  """Metrics and the drawn samples to `writer` (a clu `MetricWriter`: the run's
  metrics.jsonl and TensorBoard, `training.metrics_writer`),
  detections to `eval/detections_<step>.json`, the drawn samples to `eval/samples_<step>.png`."""
  logging.info('evaluation at step %d: %s over %d images (%d unreadable, left out) in %.1f s '
               '(%.1f images/s; compiling %.1f s)', step,
               ' '.join(f'{k} {v:.4f}' for k, v in result.metrics.items()), result.num_images,
               result.images_skipped, result.seconds, result.num_images / max(result.seconds, 1e-9),
               result.compile_seconds)
  if jax.process_index() != 0:
    return
  directory = os.path.join(workdir, EVAL_DIR)
  tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(os.path.join(directory, f'detections_{step}.json'), 'w') as f:
    json.dump(result.results, f)
  writer.write_scalars(step, {
      **result.metrics, 'eval_images': result.num_images,
      'eval_images_skipped': result.images_skipped,
      'eval_images_per_sec': round(result.num_images / max(result.seconds, 1e-9), 2)})
  if result.samples:   # TensorBoard shows each as eval/samples/<i>
    writer.write_images(step, {f'eval/samples/{i}': image for i, image in enumerate(result.samples)})
  writer.flush()
  if result.samples:
    with tf.io.gfile.GFile(samples_path(workdir, step), 'wb') as f:
      Image.fromarray(visualize.grid(result.samples)).save(f, format='PNG')


def samples_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, EVAL_DIR, f'samples_{step}.png')
