"""A run's metrics through clu's `metric_writers`: TensorBoard (`DIR/tensorboard`)
and `DIR/metrics.jsonl`, one JSON object per logged step.

Only process 0 writes. A resumed run keeps the lines up to the checkpoint it
resumed from and drops the later ones (logged by the run that was interrupted),
so the file reads as one uninterrupted run (an evaluation-only run keeps every
line).
"""
import json
import os
from typing import Any, List, Mapping, Optional

from clu import metric_writers
import jax
import numpy as np
import tensorflow as tf

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def read_metrics(workdir: str) -> List[dict]:
  path = os.path.join(workdir, METRICS_FILE)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _plain(value: Any) -> Any:
  return value.item() if isinstance(value, (np.generic, np.ndarray)) else value


class JsonlWriter(metric_writers.MetricWriter):
  """Scalars to `metrics.jsonl`, a line per `write_scalars` call, written at once
  (appended locally; on GCS, whose objects cannot be appended to, the file is
  rewritten). The file holds scalars only: images, texts, histograms and the
  rest go to the TensorBoard writer beside it, and are not written here."""

  def __init__(self, workdir: str, resume_step: Optional[int] = 0):
    tf.io.gfile.makedirs(workdir)
    self.path = os.path.join(workdir, METRICS_FILE)
    self.append = '://' not in workdir
    self.lines = [json.dumps(r) + '\n' for r in read_metrics(workdir)
                  if resume_step is None or r.get('step', 0) <= resume_step]
    self._rewrite()

  def _rewrite(self) -> None:
    with tf.io.gfile.GFile(self.path + '.tmp', 'w') as f:
      f.write(''.join(self.lines))
    tf.io.gfile.rename(self.path + '.tmp', self.path, overwrite=True)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    line = json.dumps({'step': int(step), **{k: _plain(v) for k, v in scalars.items()}}) + '\n'
    self.lines.append(line)
    if self.append:
      with open(self.path, 'a') as f:
        f.write(line)
    else:
      self._rewrite()

  def write_summaries(self, step, values, metadata=None) -> None:
    del step, values, metadata

  def write_images(self, step, images) -> None:
    del step, images

  def write_videos(self, step, videos) -> None:
    del step, videos

  def write_audios(self, step, audios, *, sample_rate) -> None:
    del step, audios, sample_rate

  def write_texts(self, step, texts) -> None:
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    del step, arrays, num_buckets

  def write_hparams(self, hparams) -> None:
    del hparams

  def flush(self) -> None:
    pass   # every line is on disk when write_scalars returns

  def close(self) -> None:
    pass


def create_writer(workdir: str, resume_step: Optional[int] = 0) -> metric_writers.MetricWriter:
  """metrics.jsonl and TensorBoard on process 0; on the other processes a writer
  that writes nothing. `resume_step`: the step a resumed run starts from (lines
  after it are dropped); None keeps every line."""
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  return metric_writers.MultiWriter([
      JsonlWriter(workdir, resume_step),
      metric_writers.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))])

