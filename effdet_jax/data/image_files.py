"""Image files to RGB arrays, for the commands that take photos (predict, TFLite calibration)."""
import numpy as np
from PIL import Image
import tensorflow as tf


def load_image(path: str) -> np.ndarray:
  """RGB uint8. Decoded by TF as the training and evaluation input pipelines
  decode (JPEG decoders differ by a few levels, which would move detections),
  by PIL for the formats TF does not read (TIFF, ...)."""
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = f.read()
  except tf.errors.OpError as e:
    raise ValueError(f'cannot read image {path!r}: {e.message}') from e
  if _tf_decodes(data):
    try:
      return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, ValueError):
      pass
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read image {path!r}: {e}') from e


# The signatures of what `tf.io.decode_image` reads. Other bytes go to PIL at once: a
# failed TF decode logs a C++ warning that no log level hides.
_TF_SIGNATURES = (b'\xff\xd8\xff', b'\x89PNG', b'GIF8', b'BM')


def _tf_decodes(data: bytes) -> bool:
  return data.startswith(_TF_SIGNATURES) or (data[:4] == b'RIFF' and data[8:12] == b'WEBP')
