"""A TFLite model of a detector, ending as the official exports do in TFLite's
detection post-process op (`TFLite_Detection_PostProcess`).

The network runs as one StableHLO module with the weights inside (constants,
so the converter sees ordinary convolutions and can quantize them), preceded by
the normalization; TFLite's converter legalizes the module to builtin ops. The
post-process op decodes the boxes against the anchors (centre-size, normalized)
and runs its fast NMS: the best class of each anchor, one class-agnostic hard
NMS (IoU `postprocess.iou_threshold`), scores above `postprocess.score_threshold`,
at most `postprocess.max_detections`. That is this project's
`nms_method='hard', max_nms_inputs=0, infer_per_class=False`; the official
TFLite exports make the same choice (`tflite_nms_implements_signature`).

Input `images`: `[1, H, W, 3]` RGB pixels 0..255 at the model's size (float32;
uint8 for an int8 model, whose input quantization then maps 0..255 to itself
within a level). To reproduce the official preprocessing resize keeping the
aspect ratio and pad bottom/right with `model.mean_rgb` (zero after
normalization). Outputs: `detection_boxes` `[1, K, 4]` `[ymin, xmin, ymax,
xmax]` normalized to the input size, `detection_classes` `[1, K]` (0-based class
index, as float), `detection_scores` `[1, K]`, `num_detections` `[1]`.
"""
import dataclasses
import os
import tempfile
import time
from typing import Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils

from effdet_jax.data.image_files import load_image
from effdet_jax.detection import anchors as anchors_lib
from effdet_jax.export.saved_model import call_exported, serialize_for_tf
from effdet_jax.inference.detector import resize_scale
from effdet_jax.models import build_model, image_hw

QUANTIZATIONS = ('none', 'float16', 'int8')
POSTPROCESS_OP = 'TFLite_Detection_PostProcess'
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


@dataclasses.dataclass
class TFLiteInfo:
  quantize: str
  calibration_images: int
  bytes: int
  export_seconds: float


def network_fn(config: ml_collections.ConfigDict, variables):
  """Pixels `[1, H, W, 3]` -> (box encodings `[1, A, 4]`, class scores `[1, A, C]`),
  with native convolutions (TFLite's CONV_2D / DEPTHWISE_CONV_2D)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.conv_impl = 'native'
  model = build_model(config)
  mean = np.float32(config.model.mean_rgb)
  std = np.float32(config.model.stddev_rgb)
  num_classes = config.model.num_classes

  def run(images):
    cls_outputs, box_outputs = model.apply(variables, (images - mean) / std, train=False)
    boxes = jnp.concatenate([b.reshape(b.shape[0], -1, 4) for b in box_outputs], axis=1)
    logits = jnp.concatenate([c.reshape(c.shape[0], -1, num_classes) for c in cls_outputs], axis=1)
    return boxes, jax.nn.sigmoid(logits)
  return run


def normalized_center_anchors(config: ml_collections.ConfigDict) -> np.ndarray:
  """The anchors as the post-process op takes them: `[A, 4]` (y, x, h, w) / input size."""
  height, width = image_hw(config)
  a = anchors_lib.anchors_for(config).astype(np.float64)
  center = np.stack([(a[:, 0] + a[:, 2]) / 2 / height, (a[:, 1] + a[:, 3]) / 2 / width,
                     (a[:, 2] - a[:, 0]) / height, (a[:, 3] - a[:, 1]) / width], axis=1)
  return center.astype(np.float32)


def _postprocess_signature(config: ml_collections.ConfigDict) -> str:
  """The `experimental_implements` text the converter turns into the op's attributes."""
  p = config.postprocess
  attrs = [('max_detections', 'i', p.max_detections), ('max_classes_per_detection', 'i', 1),
           ('use_regular_nms', 'b', 'false'), ('nms_score_threshold', 'f', p.score_threshold),
           ('nms_iou_threshold', 'f', p.iou_threshold), ('y_scale', 'f', 1.0),
           ('x_scale', 'f', 1.0), ('h_scale', 'f', 1.0), ('w_scale', 'f', 1.0),
           ('num_classes', 'i', config.model.num_classes)]
  return ' '.join([f'name: "{POSTPROCESS_OP}"'] + [
      f'attr {{ key: "{key}" value {{ {kind}: {value} }} }}' for key, kind, value in attrs])


class _NetworkModule(tf.Module):
  """The network as TF sees it: one `XlaCallModule` op."""

  def __init__(self, config: ml_collections.ConfigDict, variables):
    super().__init__()
    height, width = image_hw(config)
    self.exported = jax.export.export(jax.jit(network_fn(config, variables)), platforms=('cpu',))(
        jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32))
    self.module, _ = serialize_for_tf(self.exported)
    self.run = tf.function(self._run, autograph=False, input_signature=[
        tf.TensorSpec([1, height, width, 3], tf.float32, name='images')])

  def _run(self, images):
    boxes, scores = call_exported(self.exported, self.module, [images])
    return {'box_encodings': boxes, 'class_scores': scores}


class _PostprocessModule(tf.Module):
  """The post-process op as TF sees it: a function the converter replaces by the op."""

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__()
    anchors = normalized_center_anchors(config)
    self.anchors = tf.constant(anchors)

    @tf.function(experimental_implements=_postprocess_signature(config))
    def detection_postprocess(box_encodings, class_predictions, anchor_boxes):
      del box_encodings, class_predictions, anchor_boxes   # TFLite's op has no TF kernel
      return tuple(tf.constant(0.0, name=n) for n in ('boxes', 'classes', 'scores', 'count'))
    self._postprocess = detection_postprocess
    self.run = tf.function(self._run, autograph=False, input_signature=[
        tf.TensorSpec([1, len(anchors), 4], tf.float32, name='box_encodings'),
        tf.TensorSpec([1, len(anchors), config.model.num_classes], tf.float32,
                      name='class_scores')])

  def _run(self, box_encodings, class_scores):
    boxes, classes, scores, count = self._postprocess(box_encodings, class_scores, self.anchors)
    return {'detection_boxes': boxes, 'detection_classes': classes,
            'detection_scores': scores, 'num_detections': count}


def _convert(module: tf.Module, configure=None) -> bytes:
  with tempfile.TemporaryDirectory(prefix='effdet_tflite_') as saved:
    tf.saved_model.save(module, saved, signatures={'serving_default': module.run})
    converter = tf.lite.TFLiteConverter.from_saved_model(saved, ['serving_default'])
    if configure:
      configure(converter)
    return converter.convert()


def _join(network: bytes, postprocess: bytes) -> bytes:
  """One model: the post-process model's operators appended to the network's,
  reading the network's outputs where it read its own inputs (matched by name).

  Converted together, TF 2.21's converter inlines the post-process function into
  the graph once the network is an `XlaCallModule` (and then prunes it, its body
  being placeholders) instead of replacing it by the op; each converts alone.
  """
  first = flatbuffer_utils.convert_bytearray_to_object(network)
  second = flatbuffer_utils.convert_bytearray_to_object(postprocess)
  graph, tail = first.subgraphs[0], second.subgraphs[0]
  net_signature, post_signature = first.signatureDefs[0], second.signatureDefs[0]
  produced = {_text(m.name): m.tensorIndex for m in net_signature.outputs}
  buffer_offset, tensor_offset = len(first.buffers), len(graph.tensors)
  first.buffers.extend(second.buffers)
  for tensor in tail.tensors:
    tensor.buffer = tensor.buffer + buffer_offset if tensor.buffer else 0
  graph.tensors.extend(tail.tensors)
  remap = {m.tensorIndex + tensor_offset: produced[_text(m.name)] for m in post_signature.inputs}
  moved = lambda i: i if i < 0 else remap.get(i + tensor_offset, i + tensor_offset)
  for op in tail.operators:
    op.opcodeIndex = _opcode_index(first, second.operatorCodes[op.opcodeIndex])
    op.inputs = [moved(i) for i in op.inputs]
    op.outputs = [moved(i) for i in op.outputs]
    graph.operators.append(op)
  graph.outputs = [moved(i) for i in tail.outputs]
  for m in post_signature.outputs:
    m.tensorIndex = moved(m.tensorIndex)
  net_signature.outputs = post_signature.outputs
  return bytes(flatbuffer_utils.convert_object_to_bytearray(first))


def _opcode_index(model, code) -> int:
  for i, known in enumerate(model.operatorCodes):
    if (known.builtinCode, known.deprecatedBuiltinCode, known.customCode, known.version) == (
        code.builtinCode, code.deprecatedBuiltinCode, code.customCode, code.version):
      return i
  model.operatorCodes.append(code)
  return len(model.operatorCodes) - 1


def _text(name) -> str:
  return name.decode() if isinstance(name, bytes) else name


def calibration_images(directory: str, config: ml_collections.ConfigDict,
                       limit: int) -> np.ndarray:
  """Up to `limit` photos of `directory` as the model input (resized keeping the
  aspect ratio, padded with the mean colour): `[N, H, W, 3]` float32 pixels."""
  if not tf.io.gfile.isdir(directory):
    raise ValueError(f'--calibration_images={directory!r} is not a directory; expected a '
                     f'folder of JPEG/PNG photos like the ones the model will see')
  names = sorted(n for n in tf.io.gfile.listdir(directory) if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise ValueError(f'--calibration_images={directory!r} holds no image files '
                     f'({", ".join(IMAGE_SUFFIXES)})')
  return np.stack([to_model_input(load_image(os.path.join(directory, n)), config)
                   for n in names[:limit]])


def to_model_input(image: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """RGB uint8 `[h, w, 3]` -> the TFLite model's input pixels `[H, W, 3]` float32:
  the official preprocessing, with the normalization left to the model."""
  height, width = image_hw(config)
  _, *size = resize_scale(image.shape[0], image.shape[1], (height, width))
  resized = tf.image.resize(image.astype(np.float32), size, method='bilinear').numpy()
  out = np.empty((height, width, 3), np.float32)
  out[:] = np.float32(config.model.mean_rgb)
  out[:size[0], :size[1]] = resized[:height, :width]
  return out


def export_tflite(path: str, config: ml_collections.ConfigDict, variables, *,
                  quantize: str = 'none',
                  calibration: Optional[Iterable[np.ndarray]] = None) -> TFLiteInfo:
  """Write the TFLite model of `config`'s model with `variables` to `path`.

  Args:
    quantize: 'none' (float32), 'float16' (weights) or 'int8' (weights and
      activations, post-training; the post-process op stays float).
    calibration: for int8, model inputs `[H, W, 3]` (see `calibration_images`).
  """
  if quantize not in QUANTIZATIONS:
    raise ValueError(f'--quantize must be one of {QUANTIZATIONS}, got {quantize!r}')
  calibration = None if calibration is None else list(calibration)
  if quantize == 'int8' and not calibration:
    raise ValueError('--quantize=int8 needs --calibration_images: a folder of photos to '
                     'measure the activation ranges on')
  start = time.perf_counter()

  def configure(converter):
    if quantize == 'float16':
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.target_spec.supported_types = [tf.float16]
    elif quantize == 'int8':
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: ([image[None]] for image in calibration)
      converter.inference_input_type = tf.uint8
      converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

  network = _convert(_NetworkModule(config, jax.device_get(variables)), configure)
  # The post-process op has no quantized kernel: it stays float, as in the official export.
  model = _join(network, _convert(_PostprocessModule(config)))
  tf.io.gfile.makedirs(os.path.dirname(path) or '.')
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(model)
  return TFLiteInfo(quantize, len(calibration or ()), len(model),
                    round(time.perf_counter() - start, 1))


def run_tflite(path_or_model, images: Sequence[np.ndarray]):
  """Run a TFLite model on model inputs `[H, W, 3]` (float pixels), quantizing them
  for an int8 model; one dict per image: `boxes` (normalized), `classes`,
  `scores`, `num_detections`."""
  kwargs = ({'model_content': path_or_model} if isinstance(path_or_model, bytes)
            else {'model_path': path_or_model})
  interpreter = tf.lite.Interpreter(**kwargs)
  runner = interpreter.get_signature_runner('serving_default')
  detail = runner.get_input_details()['images']
  results = []
  for image in images:
    x = np.asarray(image, np.float32)[None]
    if detail['dtype'] != np.float32:
      scale, zero = detail['quantization']
      info = np.iinfo(detail['dtype'])
      x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail['dtype'])
    out = runner(images=x)
    n = int(out['num_detections'][0])
    results.append({'boxes': out['detection_boxes'][0, :n],
                    'scores': out['detection_scores'][0, :n],
                    'classes': out['detection_classes'][0, :n].astype(np.int64),
                    'num_detections': n})
  return results
