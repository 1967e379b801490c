"""Run an exported SavedModel with TensorFlow alone (JAX made unimportable), as a
serving system would: `python run_saved_model.py SAVED_MODEL OUT.npz IMAGE...`.

Writes `<signature>/<output>` arrays for both signatures (uint8 images one at a
time, encoded bytes all at once) and `inputs` (each signature's input shape).
"""
import sys

sys.modules['jax'] = None   # any import of JAX now fails
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(saved_model, output, *paths):
  model = tf.saved_model.load(saved_model)
  encoded = [tf.io.read_file(p) for p in paths]
  results = {}
  batch = model.signatures['serving_encoded'](encoded_images=tf.stack(encoded))
  for key, value in batch.items():
    results[f'serving_encoded/{key}'] = value.numpy()
  singles = [model.signatures['serving_default'](
      images=tf.io.decode_image(e, channels=3, expand_animations=False)[None]) for e in encoded]
  for key in singles[0]:
    results[f'serving_default/{key}'] = np.concatenate([s[key].numpy() for s in singles])
  for name in ('serving_default', 'serving_encoded'):
    spec = list(model.signatures[name].structured_input_signature[1].values())[0]
    results[f'inputs/{name}'] = np.array([-1 if d is None else d for d in spec.shape])
  np.savez(output, **results)


if __name__ == '__main__':
  main(*sys.argv[1:])
