"""Boxes drawn on images: the predict tool's pictures and evaluation's samples
(TensorBoard, and side by side in one PNG)."""
from typing import Dict, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def draw_boxes(image: np.ndarray, detections: Sequence[Dict], min_score: float = 0.3,
               ground_truth: Sequence[Sequence[float]] = ()) -> np.ndarray:
  """uint8 RGB with `label score` tagged boxes, best drawn last (on top).

  Args:
    detections: `{'box': [ymin, xmin, ymax, xmax], 'score', 'category_id', 'label'}` in
      the image's pixels; those scoring under `min_score` are left out.
    ground_truth: `[ymin, xmin, ymax, xmax]` boxes, drawn first as thin white outlines.
  """
  canvas = Image.fromarray(np.asarray(image, np.uint8))
  pen = ImageDraw.Draw(canvas)
  size = max(image.shape[:2])
  line = max(2, size // 250)
  font = ImageFont.load_default(size=max(12, size // 40))
  for ymin, xmin, ymax, xmax in ground_truth:
    pen.rectangle([xmin, ymin, xmax, ymax], outline=(255, 255, 255), width=max(1, line // 2))
  for det in sorted(detections, key=lambda d: d['score']):
    if det['score'] < min_score:
      continue
    ymin, xmin, ymax, xmax = det['box']
    color = _PALETTE[det['category_id'] % len(_PALETTE)]
    pen.rectangle([xmin, ymin, xmax, ymax], outline=color, width=line)
    text = f"{det['label']} {det['score']:.2f}"
    left, top, right, bottom = pen.textbbox((xmin, ymin), text, font=font)
    top_y = ymin - (bottom - top) - 2 * line if ymin - (bottom - top) - 2 * line >= 0 else ymin
    pen.rectangle([xmin, top_y, xmin + (right - left) + 2 * line, top_y + (bottom - top) + 2 * line],
                  fill=color)
    pen.text((xmin + line, top_y + line - (top - ymin)), text, fill=(0, 0, 0), font=font)
  return np.asarray(canvas)


def count_drawn(detections: Sequence[Dict], min_score: float) -> int:
  return sum(d['score'] >= min_score for d in detections)


def grid(images: Sequence[np.ndarray], columns: int = 4, gap: int = 4) -> np.ndarray:
  """Images side by side, `columns` per row, on white."""
  height = max(i.shape[0] for i in images)
  width = max(i.shape[1] for i in images)
  rows = -(-len(images) // columns)
  columns = min(columns, len(images))
  canvas = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
  for k, image in enumerate(images):
    top, left = (k // columns) * (height + gap), (k % columns) * (width + gap)
    canvas[top:top + image.shape[0], left:left + image.shape[1]] = image
  return canvas
