"""Scalars to TensorBoard and to `DIR/metrics.jsonl`, one JSON object per logged step.

Only process 0 writes. A resumed run keeps the lines up to the checkpoint it
resumed from and drops the later ones (logged by the run that was interrupted),
so the file reads as one uninterrupted run (an evaluation-only run keeps every
line). The file is rewritten whole at each
write: GCS objects cannot be appended to.
"""
import json
import os
from typing import Dict, Optional, Sequence

import jax
import numpy as np
import tensorflow as tf

METRICS_FILE = 'metrics.jsonl'


def read_metrics(workdir: str):
  path = os.path.join(workdir, METRICS_FILE)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:

  def __init__(self, workdir: str, resume_step: Optional[int] = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    if not self.enabled:
      return
    tf.io.gfile.makedirs(workdir)
    self.lines = [json.dumps(r) + '\n' for r in read_metrics(workdir)
                  if resume_step is None or r.get('step', 0) <= resume_step]
    self._flush()
    self.summary = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: Dict[str, float], prefix: str = '') -> None:
    if not self.enabled:
      return
    self.lines.append(json.dumps({'step': int(step), **{prefix + k: v for k, v in scalars.items()}})
                      + '\n')
    self._flush()
    with self.summary.as_default(step=int(step)):
      for key, value in scalars.items():
        if isinstance(value, (int, float)):
          tf.summary.scalar(prefix + key, value)
    self.summary.flush()

  def images(self, step: int, name: str, images: Sequence[np.ndarray]) -> None:
    """uint8 RGB images of any sizes, to TensorBoard as `name/0`, `name/1`, ..."""
    if not self.enabled or not images:
      return
    with self.summary.as_default(step=int(step)):
      for i, image in enumerate(images):
        tf.summary.image(f'{name}/{i}', np.asarray(image, np.uint8)[None])
    self.summary.flush()

  def _flush(self) -> None:
    with tf.io.gfile.GFile(self.path + '.tmp', 'w') as f:
      f.write(''.join(self.lines))
    tf.io.gfile.rename(self.path + '.tmp', self.path, overwrite=True)

  def close(self) -> None:
    if self.enabled:
      self.summary.close()
