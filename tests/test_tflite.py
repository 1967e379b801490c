"""TFLite export of EfficientDet-Lite0 (the official-layout parity checkpoint):
the float model gives the SavedModel's detections, int8 keeps most of them."""
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data

from effdet_jax.configs.efficientdet import get_config
from effdet_jax.export import exporter, tflite
from conftest import require_parity

pytestmark = pytest.mark.slow
PHOTOS = ('astronaut', 'coffee', 'chelsea')
TOP = 20


def lite0_config():
  """TFLite's fast NMS is this project's hard, class-agnostic NMS over the best
  class of each anchor."""
  config = get_config('lite0')
  config.postprocess.nms_method = 'hard'
  config.postprocess.max_nms_inputs = 0
  config.postprocess.max_detections = TOP
  return config


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  ckpt = os.path.join(require_parity('efficientdet-lite0'), 'ckpt')
  root = tmp_path_factory.mktemp('tflite')
  config = lite0_config()
  # Photos at the model's size, whole pixels: both models see the same input.
  inputs = [np.round(tflite.to_model_input(getattr(data, n)(), config)).astype(np.uint8)
            for n in PHOTOS]
  calibration = root / 'calibration'
  calibration.mkdir()
  for name in ('rocket', 'cat', 'hubble_deep_field', 'immunohistochemistry',
               'coffee', 'astronaut'):
    image = getattr(data, name)()
    Image.fromarray(image if image.ndim == 3 else np.stack([image] * 3, -1)).save(
        calibration / f'{name}.png')
  summary = exporter.export(config, ckpt, str(root / 'float'), ['saved_model', 'tflite'])
  int8 = exporter.export(config, ckpt, str(root / 'int8'), ['tflite'], quantize='int8',
                         calibration_images=str(calibration))
  return config, summary, int8, inputs


def saved_model_detections(summary, inputs):
  model = tf.saved_model.load(summary['saved_model']['path'])
  out = model.signatures['serving_default'](images=tf.constant(np.stack(inputs)))
  return [{'boxes': out['detection_boxes'][i, :int(n)].numpy(),
           'scores': out['detection_scores'][i, :int(n)].numpy(),
           'classes': out['detection_classes'][i, :int(n)].numpy() - 1}   # COCO id = class + 1
          for i, n in enumerate(out['num_detections'].numpy())]


def in_pixels(detection, config):
  """TFLite boxes are normalized and not clipped; the SavedModel's are pixels, clipped."""
  size = np.float32(config.model.image_size * 2)
  return np.clip(detection['boxes'] * size, 0, size)


def test_float_tflite_gives_the_saved_models_detections(exported):
  config, summary, _, inputs = exported
  expected = saved_model_detections(summary, inputs)
  got = tflite.run_tflite(summary['tflite']['path'], [x.astype(np.float32) for x in inputs])
  for mine, want in zip(got, expected):
    assert mine['num_detections'] == len(want['scores']) == TOP
    np.testing.assert_array_equal(mine['classes'], want['classes'])
    np.testing.assert_allclose(mine['scores'], want['scores'], atol=1e-3)
    np.testing.assert_allclose(in_pixels(mine, config), want['boxes'], atol=0.5)


def test_int8_tflite_runs_on_uint8_and_keeps_most_detections(exported):
  """A float detection survives if the int8 model has one of the same class
  centred within one level-3 stride (8 px). Not IoU: these random weights'
  boxes are full-height strips 0.1-3 px wide, whose IoU measures sub-pixel
  noise (IoU > 0.5 keeps 2-4 of 20 for that reason alone). Measured: 17, 17, 18."""
  config, summary, int8, inputs = exported
  assert int8['tflite']['calibration_images'] == 6
  assert int8['tflite']['bytes'] < 0.4 * summary['tflite']['bytes']
  interpreter = tf.lite.Interpreter(model_path=int8['tflite']['path'])
  assert interpreter.get_signature_runner().get_input_details()['images']['dtype'] == np.uint8
  floats = tflite.run_tflite(summary['tflite']['path'], [x.astype(np.float32) for x in inputs])
  quantized = tflite.run_tflite(int8['tflite']['path'], [x.astype(np.float32) for x in inputs])
  kept = []
  for f, q in zip(floats, quantized):
    assert q['num_detections'] == TOP
    centre = lambda d: (lambda b: (b[:, :2] + b[:, 2:]) / 2)(in_pixels(d, config))
    near = np.abs(centre(f)[:, None] - centre(q)[None]).max(-1) < 8
    same_class = f['classes'][:, None] == q['classes'][None, :]
    kept.append(int(np.sum(np.any(same_class & near, axis=1))))
  assert min(kept) >= 14, kept


def test_bad_tflite_options_are_named(tmp_path):
  config = lite0_config()
  with pytest.raises(ValueError, match='calibration_images'):
    tflite.export_tflite(str(tmp_path / 'm.tflite'), config, {}, quantize='int8')
  with pytest.raises(ValueError, match='quantize'):
    tflite.export_tflite(str(tmp_path / 'm.tflite'), config, {}, quantize='int4')
  with pytest.raises(ValueError, match='not a directory'):
    tflite.calibration_images(str(tmp_path / 'absent'), config, 10)
  with pytest.raises(ValueError, match='no image files'):
    tflite.calibration_images(str(tmp_path), config, 10)
