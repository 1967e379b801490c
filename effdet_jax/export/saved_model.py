"""A TF SavedModel of a detector, servable with TensorFlow alone.

The network and the post-processing are exported with `jax.export` to one
StableHLO module and run by TF's `XlaCallModule` op, the mechanism of
`jax2tf.convert` (native serialization). We build the op ourselves because
jax2tf writes StableHLO for consumers at most four weeks older than JAX, which
released TensorFlow often is not (TF 2.21 cannot read what JAX 0.10 writes):
the module is re-serialized at the StableHLO version of the TensorFlow
installed at export time (`stablehlo_version` in the result).

The preprocessing (the official one: normalize, resize keeping the aspect
ratio, pad) runs in TF ops, so images of any size are accepted. The module has
a fixed batch (`batch_size`); the signatures take any number of images and run
it over them in chunks, padding the last.

Signatures, each returning `detection_boxes` `[N, K, 4]` float32 (`[ymin, xmin,
ymax, xmax]` in original-image pixels), `detection_scores` `[N, K]` float32,
`detection_classes` `[N, K]` int64 (dataset category ids, -1 past
`num_detections`), `num_detections` `[N]` int32:
  serving_default   `images`: uint8 `[N, H, W, 3]` RGB;
  serving_encoded   `encoded_images`: string `[N]`, JPEG/PNG/GIF/BMP bytes.
"""
import dataclasses
import time
from typing import Optional, Sequence, Tuple

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo
from tensorflow.compiler.tf2xla.python import xla as tfxla

from effdet_jax.data.categories import CategoryMap
from effdet_jax.inference.detector import detection_fn
from effdet_jax.models import image_hw
from effdet_jax.runtime import platforms as platform_choice

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')
# jax.export's platform names -> the backend names the model's choices follow.
_BACKENDS = {'cpu': 'cpu', 'cuda': 'gpu', 'rocm': 'gpu', 'tpu': 'tpu'}
OUTPUT_KEYS = ('detection_boxes', 'detection_scores', 'detection_classes', 'num_detections')


@dataclasses.dataclass
class SavedModelInfo:
  platforms: Tuple[str, ...]
  batch_size: int
  static_batch: bool
  image_size: Optional[Tuple[int, int]]
  stablehlo_version: str
  export_seconds: float


def current_platform() -> str:
  backend = jax.default_backend()
  return 'cuda' if backend == 'gpu' else backend


def _version(text: str) -> Tuple[int, ...]:
  return tuple(int(p) for p in text.split('.'))


def serialize_for_tf(exported: jax.export.Exported) -> Tuple[bytes, str]:
  """The module as a StableHLO artifact the installed TensorFlow can read."""
  target = tf_stablehlo.get_current_version()
  maximum = tfxla.call_module_maximum_supported_version()
  if exported.calling_convention_version > maximum:
    raise RuntimeError(f'JAX wrote calling convention {exported.calling_convention_version}; '
                       f'this TensorFlow runs at most {maximum}: upgrade TensorFlow')
  try:
    return tf_stablehlo.serialize_portable_artifact_str(exported.mlir_module(), target), target
  except Exception as e:  # the TF-side parser raises plain exceptions
    raise RuntimeError(f'TensorFlow {tf.__version__} (StableHLO {target}) cannot read the module '
                       f'JAX {jax.__version__} exported: {e}') from e


def call_exported(exported: jax.export.Exported, module: bytes, args) -> tuple:
  """TF's `XlaCallModule` op running `module` (from `serialize_for_tf`) on `args`."""
  args = [a for i, a in enumerate(args) if i in exported.module_kept_var_idx]
  attrs = {}
  if exported.calling_convention_version >= 10:
    attrs['use_shardy_partitioner'] = jax.config.jax_use_shardy_partitioner
  outputs = tfxla.call_module(
      args, version=exported.calling_convention_version, module=module,
      Tout=[tf.as_dtype(a.dtype) for a in exported.out_avals],
      Sout=[a.shape for a in exported.out_avals],
      platforms=[p.upper() for p in exported.platforms],
      disabled_checks=[str(c) for c in exported.disabled_safety_checks],
      function_list=[], has_token_input_output=False, **attrs)
  return tuple(outputs)


class _ServingModule(tf.Module):
  """The weights as TF variables, the module, and the two signatures."""

  def __init__(self, exported: jax.export.Exported, module: bytes, weights: np.ndarray,
               config: ml_collections.ConfigDict, category_ids: np.ndarray, batch_size: int,
               images_shape: Sequence[Optional[int]], encoded_shape: Sequence[Optional[int]]):
    super().__init__()
    # The signatures' shapes, checked when called (a loaded SavedModel's
    # signatures do not check them by themselves).
    self._images_shape = list(images_shape)
    self._encoded_shape = list(encoded_shape)
    self.weights = tf.Variable(weights, trainable=False, name='weights')
    self._exported = exported
    self._module = module
    self._batch = batch_size
    self._input_size = image_hw(config)
    self._mean = tf.constant(config.model.mean_rgb, tf.float32)
    self._std = tf.constant(config.model.stddev_rgb, tf.float32)
    self._category_ids = tf.constant(category_ids, tf.int64)

  def _preprocess(self, image):
    """uint8 `[h, w, 3]` -> (model input, original pixels per input pixel), as `Detector`."""
    height, width = self._input_size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.minimum(tf.constant(height, tf.float32) / shape[0],
                       tf.constant(width, tf.float32) / shape[1])
    new_size = tf.cast(shape * scale, tf.int32)
    normalized = (tf.cast(image, tf.float32) - self._mean) / self._std
    resized = tf.image.resize(normalized, new_size, method='bilinear')[:height, :width]
    size = tf.shape(resized)
    padded = tf.pad(resized, [[0, height - size[0]], [0, width - size[1]], [0, 0]])
    return tf.ensure_shape(padded, [height, width, 3]), 1.0 / scale

  def _call_module(self, images, scales):
    return call_exported(self._exported, self._module, [self.weights, images, scales])

  @tf.function(autograph=False)
  def _detect(self, images, scales):
    """Preprocessed `[N, H, W, 3]` -> the output dict, the module run on chunks of the
    batch (one function, so the module is stored once for both signatures)."""
    count = tf.shape(images)[0]
    chunks = (count + self._batch - 1) // self._batch
    pad = chunks * self._batch - count
    images = tf.pad(images, [[0, pad], [0, 0], [0, 0], [0, 0]])
    scales = tf.pad(scales, [[0, pad]], constant_values=1.0)
    images = tf.reshape(images, [chunks, self._batch, *self._input_size, 3])
    scales = tf.reshape(scales, [chunks, self._batch])
    spec = tuple(tf.TensorSpec(a.shape, tf.as_dtype(a.dtype)) for a in self._exported.out_avals)
    boxes, scores, classes, valid = (
        tf.reshape(o, [-1, *o.shape[2:]])[:count] for o in
        tf.map_fn(lambda x: self._call_module(*x), (images, scales), fn_output_signature=spec,
                  parallel_iterations=1))
    present = tf.range(tf.shape(classes)[1])[None, :] < valid[:, None]
    return {'detection_boxes': boxes, 'detection_scores': scores,
            'detection_classes': tf.where(present, tf.gather(self._category_ids, classes),
                                          tf.constant(-1, tf.int64)),
            'num_detections': valid}

  def detect_images(self, images):
    images = tf.ensure_shape(images, self._images_shape)
    prepared, scales = tf.map_fn(
        self._preprocess, images,
        fn_output_signature=(tf.TensorSpec([*self._input_size, 3], tf.float32),
                             tf.TensorSpec([], tf.float32)))
    return self._detect(prepared, scales)

  def detect_encoded(self, encoded_images):
    def decode(data):
      image = tf.io.decode_image(data, channels=3, expand_animations=False)
      return self._preprocess(image)
    encoded_images = tf.ensure_shape(encoded_images, self._encoded_shape)
    prepared, scales = tf.map_fn(
        decode, encoded_images,
        fn_output_signature=(tf.TensorSpec([*self._input_size, 3], tf.float32),
                             tf.TensorSpec([], tf.float32)))
    return self._detect(prepared, scales)


def export_saved_model(directory: str, config: ml_collections.ConfigDict, variables,
                       categories: CategoryMap, *, per_class: Optional[bool] = None,
                       batch_size: int = 1, static_batch: bool = False,
                       image_size: Optional[Tuple[int, int]] = None,
                       platforms: Sequence[str] = ()) -> SavedModelInfo:
  """Write the SavedModel of `config`'s model with `variables` to `directory`.

  Args:
    per_class: NMS within each class; default `config.postprocess.infer_per_class`.
    batch_size: images per module call; with `static_batch` also the only batch
      size the signatures accept (else any).
    image_size: `(height, width)` of `serving_default`'s images; default any.
    platforms: where the SavedModel may run (of `PLATFORMS`); default this machine's.
  """
  start = time.perf_counter()
  platforms = tuple(platforms) or (current_platform(),)
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown:
    raise ValueError(f'unknown platforms {unknown}; expected some of {PLATFORMS}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  per_class = config.postprocess.infer_per_class if per_class is None else per_class
  run = detection_fn(config, per_class)
  height, width = image_hw(config)
  # One weight vector: a single TF variable rather than hundreds of loop inputs.
  weights, unflatten = ravel_pytree(jax.device_get(variables))

  def module_fn(weights, images, scales):
    d = run(unflatten(weights), images, scales)
    return d.boxes, d.scores, d.classes, d.num_valid

  specs = (jax.ShapeDtypeStruct(weights.shape, weights.dtype),
           jax.ShapeDtypeStruct((batch_size, height, width, 3), jnp.float32),
           jax.ShapeDtypeStruct((batch_size,), jnp.float32))
  # The per-platform choices ('auto' convolutions, inference chunking) are made
  # for the first platform listed, while tracing.
  with platform_choice.target(_BACKENDS[platforms[0]]):
    exported = jax.export.export(jax.jit(module_fn), platforms=platforms)(*specs)
  module, version = serialize_for_tf(exported)
  batch = batch_size if static_batch else None
  images_shape = [batch, *(image_size or (None, None)), 3]
  serving = _ServingModule(exported, module, np.asarray(weights), config,
                           categories.category_ids(config.model.num_classes), batch_size,
                           images_shape, [batch])
  images_fn = tf.function(serving.detect_images, autograph=False, input_signature=[
      tf.TensorSpec(images_shape, tf.uint8, name='images')])
  encoded_fn = tf.function(serving.detect_encoded, autograph=False, input_signature=[
      tf.TensorSpec([batch], tf.string, name='encoded_images')])
  serving.detect_images = images_fn
  serving.detect_encoded = encoded_fn
  tf.saved_model.save(serving, directory, signatures={
      'serving_default': images_fn.get_concrete_function(),
      'serving_encoded': encoded_fn.get_concrete_function()})
  return SavedModelInfo(platforms, batch_size, static_batch, tuple(image_size) if image_size else None,
                        version, round(time.perf_counter() - start, 1))
