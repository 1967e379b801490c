"""Images of any size in, detections in original-image pixels out.

The official inference preprocessing: normalize with the config's mean/std,
resize keeping the aspect ratio so the image fits the model input (bilinear),
pad bottom/right with zeros; then the network and the jitted post-processing.
"""
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from effdet_jax.data.coco_labels import label_name
from effdet_jax.detection import anchors as anchors_lib
from effdet_jax.detection import postprocess as postprocess_lib
from effdet_jax.models import build_model, image_hw, inference


def resize_scale(height: int, width: int, target: Sequence[int]):
  """The official scale (float32, as TF computes it) and the resized size."""
  scale = np.minimum(np.float32(target[0]) / np.float32(height),
                     np.float32(target[1]) / np.float32(width))
  return scale, int(np.float32(height) * scale), int(np.float32(width) * scale)


def detection_fn(config: ml_collections.ConfigDict, per_class: bool):
  """`fn(variables, images, scales) -> Detections`: the network and the
  post-processing on a batch of preprocessed images (`scales`: original pixels
  per input pixel); shared by the Detector and the exported SavedModel."""
  nms_settings = postprocess_lib.settings(config.postprocess, per_class)
  model = build_model(config)
  anchors = jnp.asarray(anchors_lib.anchors_for(config))
  input_size = image_hw(config)

  def run(variables, images, scales):
    cls_outputs, box_outputs = inference.forward(model, variables, images)
    return postprocess_lib.postprocess(
        cls_outputs, box_outputs, anchors, scales, image_size=input_size,
        num_classes=config.model.num_classes, **nms_settings)
  return run


class Detector:
  """`Detector(config, variables)(images)` -> one dict of numpy arrays per image."""

  def __init__(self, config: ml_collections.ConfigDict, variables,
               per_class: Optional[bool] = None, batch_size: int = 1,
               category_ids: Optional[Sequence[int]] = None,
               category_names: Optional[Dict[int, str]] = None):
    """
    Args:
      config: full config; `postprocess` holds the NMS settings.
      variables: `{'params', 'batch_stats'}` for the model.
      per_class: NMS within each class; default `config.postprocess.infer_per_class`.
      batch_size: images per network call (the last batch is padded).
      category_ids: dataset category id of each model class; default `class + 1`
        (COCO's ids for the 90-class models); -1 marks a class no category uses.
      category_names: name of each category id, for labels; default COCO's.
    """
    self.config = config
    self.variables = variables
    self.category_names = category_names
    self.batch_size = batch_size
    self.input_size = image_hw(config)
    num_classes = config.model.num_classes
    self.category_ids = np.asarray(category_ids if category_ids is not None
                                   else np.arange(1, num_classes + 1))
    if len(self.category_ids) != num_classes:
      raise ValueError(f'category_ids has {len(self.category_ids)} entries, '
                       f'model.num_classes is {num_classes}')
    per_class = config.postprocess.infer_per_class if per_class is None else per_class
    self._mean = np.float32(config.model.mean_rgb)
    self._std = np.float32(config.model.stddev_rgb)
    self._run = jax.jit(detection_fn(config, per_class),
                        compiler_options=inference.compiler_options())
    self._resize = jax.jit(
        lambda image, size: jax.image.resize(image, (*size, 3), 'bilinear', antialias=False),
        static_argnums=1)

  def label(self, category_id: int) -> str:
    if self.category_names is None:
      return label_name(category_id)
    return self.category_names.get(int(category_id), f'class_{int(category_id)}')

  def preprocess(self, image: np.ndarray):
    """uint8 `[h, w, 3]` RGB -> (model input `[H, W, 3]` float32, original pixels per input pixel)."""
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'expected an RGB image [height, width, 3], got shape {image.shape}')
    height, width = image.shape[:2]
    scale, new_h, new_w = resize_scale(height, width, self.input_size)
    normalized = (image.astype(np.float32) - self._mean) / self._std
    resized = np.asarray(self._resize(jnp.asarray(normalized), (new_h, new_w)))
    padded = np.zeros((*self.input_size, 3), np.float32)
    padded[:new_h, :new_w] = resized[:self.input_size[0], :self.input_size[1]]
    return padded, np.float32(1.0) / scale

  def __call__(self, images: Sequence[np.ndarray]) -> List[Dict[str, np.ndarray]]:
    results = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      prepared = [self.preprocess(image) for image in chunk]
      inputs = np.zeros((self.batch_size, *self.input_size, 3), np.float32)
      scales = np.ones(self.batch_size, np.float32)
      for i, (x, s) in enumerate(prepared):
        inputs[i], scales[i] = x, s
      det = jax.device_get(self._run(self.variables, inputs, scales))
      for i in range(len(chunk)):
        n = int(det.num_valid[i])
        results.append({'boxes': det.boxes[i, :n], 'scores': det.scores[i, :n],
                        'category_ids': self.category_ids[det.classes[i, :n]],
                        'num_detections': n})
    return results
