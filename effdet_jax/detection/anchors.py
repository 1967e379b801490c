"""Multi-level anchors in the official order, so anchor `i` lines up with the
flattened head outputs.

Order: level (min..max), then feature-map row, column, then octave scale, then
aspect ratio, matching the head channels `anchor * num_outputs + output` with
`anchor = octave * len(aspect_ratios) + aspect`.
"""
from typing import List, Sequence, Tuple

import ml_collections
import numpy as np


def feature_sizes(image_size: Tuple[int, int], max_level: int) -> List[Tuple[int, int]]:
  """`(height, width)` of levels 0..max_level; each level halves, rounding up."""
  sizes = [tuple(image_size)]
  for _ in range(max_level):
    h, w = sizes[-1]
    sizes.append(((h - 1) // 2 + 1, (w - 1) // 2 + 1))
  return sizes


def generate_anchors(image_size: Tuple[int, int], min_level: int, max_level: int,
                     num_scales: int, aspect_ratios: Sequence[float],
                     anchor_scale: float) -> np.ndarray:
  """`[num_anchors, 4]` float32 boxes `[ymin, xmin, ymax, xmax]` in input pixels."""
  height, width = image_size
  sizes = feature_sizes(image_size, max_level)
  per_level = []
  for level in range(min_level, max_level + 1):
    stride_y = height / sizes[level][0]
    stride_x = width / sizes[level][1]
    ys = np.arange(stride_y / 2, height, stride_y)
    xs = np.arange(stride_x / 2, width, stride_x)
    yv, xv = [a.reshape(-1) for a in np.meshgrid(ys, xs, indexing='ij')]
    boxes = []
    for octave in range(num_scales):
      for aspect in aspect_ratios:
        # The official float64 arithmetic, in its order: the float32 anchors then
        # round the same way (targets equal to the last bit).
        octave_scale = octave / num_scales
        aspect_x = np.sqrt(aspect)
        half_w = anchor_scale * stride_x * 2 ** octave_scale * aspect_x / 2.0
        half_h = anchor_scale * stride_y * 2 ** octave_scale * (1.0 / aspect_x) / 2.0
        boxes.append(np.stack([yv - half_h, xv - half_w, yv + half_h, xv + half_w], axis=-1))
    per_level.append(np.stack(boxes, axis=1).reshape(-1, 4))
  return np.concatenate(per_level).astype(np.float32)


def anchors_for(config: ml_collections.ConfigDict) -> np.ndarray:
  """The anchors of a full config's model at its input size."""
  m = config.model
  return generate_anchors(tuple(m.image_size), m.min_level, m.max_level, m.num_scales, m.aspect_ratios,
                          m.anchor_scale)
