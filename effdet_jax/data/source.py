"""What every reader provides, so the pipeline is written once.

A source hands out this host's share of the dataset one epoch at a time, in an
order fixed by `(seed, epoch)`: a run resumed at any step can rebuild exactly
the stream an uninterrupted run saw and skip to its position before any image
is decoded. `parse` turns one element of `epoch()` into the common raw example:

  image         tf.string: encoded image bytes, or a file path if `image_is_path`
  image_id      int64
  missing       bool: the image is known to be absent (counted, never decoded)
  boxes         [N, 4] float32 [ymin, xmin, ymax, xmax], in pixels, or in [0, 1]
                if `boxes_normalized`; as stored, not yet checked
  category_ids  [N] int64, the dataset's own ids
  is_crowd      [N] bool
  areas         [N] float32, -1 where the dataset does not say
"""
import abc
from typing import Dict, List, Optional

import tensorflow as tf


class Source(abc.ABC):
  name: str = ''
  image_is_path: bool = False
  boxes_normalized: bool = False
  # Cheap to read in any order: then training uses one global order over all hosts.
  random_access: bool = False
  # The dataset's categories as COCO-style dicts, or None if it does not list them.
  categories: Optional[List[Dict]] = None
  # Annotations left out while indexing, by reason (they belong to no example).
  index_drops: Dict[str, int] = {}

  @abc.abstractmethod
  def num_examples(self, process_index: int, process_count: int) -> int:
    """Examples in one host's share, per epoch."""

  @abc.abstractmethod
  def epoch(self, epoch: tf.Tensor, seed: Optional[int], process_index: int,
            process_count: int) -> tf.data.Dataset:
    """One epoch of this host's share; shuffled by `(seed, epoch)` unless seed is None."""

  @abc.abstractmethod
  def parse(self, element) -> Dict[str, tf.Tensor]:
    """One element of `epoch()` -> the raw example above."""
