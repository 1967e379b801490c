"""Progress lines with an ETA, for training steps and evaluation batches."""
import logging
import time

import jax


def format_eta(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
  return f'{seconds // 60}m{seconds % 60:02d}s'


class EvalProgress:
  """'evaluating: batch 40/625 (6%) 31.2 img/s ETA 2m30s', at most every
  `every_s` seconds, from the first batch after compilation on."""

  def __init__(self, num_batches: int, images_per_batch: int, every_s: float = 30.0):
    self.num_batches, self.images_per_batch, self.every_s = num_batches, images_per_batch, every_s
    self.start = self.last = None

  def update(self, batches_done: int, pending=None) -> None:
    """`pending`: the latest batch's outputs, waited for before a line is
    logged (JAX dispatches asynchronously; the rate is of finished batches)."""
    now = time.time()
    if self.start is None:             # the first batch holds the compilation: time from here
      self.start, self.last, self.first = now, now, batches_done
      return
    if now - self.last < self.every_s or batches_done >= self.num_batches:
      return
    jax.block_until_ready(pending)
    now = self.last = time.time()
    rate = (batches_done - self.first) / max(now - self.start, 1e-9)
    logging.info('evaluating: batch %d/%d (%.0f%%) %.1f img/s ETA %s', batches_done,
                 self.num_batches, 100 * batches_done / self.num_batches,
                 rate * self.images_per_batch, format_eta((self.num_batches - batches_done) / rate))
