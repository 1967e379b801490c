"""A deterministic COCO-JSON dataset of coloured shapes, for the demo and the tests.

Five classes (circle, square, triangle, cross, star) in random colours,
rotations and sizes from a dozen pixels to most of the image, on textured
backgrounds with distractor strokes. Later shapes occlude earlier ones; a
placement is rejected if it would hide more than half of a shape already there,
and every box is the box of the pixels left visible (as COCO annotates).
Image i of a split depends only on (seed, split, i).

  python -m effdet_jax.data.synthetic --output DIR [--num_train 2000 --num_val 200 --image_size 256]
"""
import json
import os
from typing import Dict, List, Tuple

from absl import flags
import jax
from jax.experimental import multihost_utils
import numpy as np
from PIL import Image, ImageDraw

from effdet_jax.runtime import cli

CATEGORIES = [{'id': i + 1, 'name': n, 'supercategory': 'shape'}
              for i, n in enumerate(('circle', 'square', 'triangle', 'cross', 'star'))]
_SPLIT_IDS = {'train': 0, 'val': 1}
_MIN_VISIBLE = 0.5
_INFO = 'synthetic.json'


def annotation_path(root: str, split: str) -> str:
  return os.path.join(root, 'annotations', f'instances_{split}.json')


def image_dir(root: str, split: str) -> str:
  return os.path.join(root, split)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
  if kind == 'square':
    corners = [np.pi / 4 + k * np.pi / 2 for k in range(4)]
    radii = [r] * 4
  elif kind == 'triangle':
    corners = [-np.pi / 2 + k * 2 * np.pi / 3 for k in range(3)]
    radii = [r] * 3
  elif kind == 'star':
    corners = [-np.pi / 2 + k * np.pi / 5 for k in range(10)]
    radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
  elif kind == 'cross':
    w = 0.33 * r
    pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w),
           (-w, w), (-w, r)]
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
  else:
    raise ValueError(kind)
  return [(cx + rad * np.cos(a + angle), cy + rad * np.sin(a + angle)) for a, rad in zip(corners, radii)]


def _shape_mask(kind: str, height: int, width: int, cx, cy, r, angle) -> np.ndarray:
  canvas = Image.new('L', (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  if kind == 'circle':
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
  else:
    draw.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
  return np.asarray(canvas) > 127


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A colour gradient, low-frequency blotches, pixel noise and a few strokes."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  t = (np.cos(rng.uniform(0, 2 * np.pi)) * xx / width + np.sin(rng.uniform(0, 2 * np.pi)) * yy / height)
  t = (t - t.min()) / max(np.ptp(t), 1e-6)
  image = c0 + (c1 - c0) * t[..., None]
  coarse = rng.normal(0, 25, (height // 32 + 2, width // 32 + 2, 3))
  blotches = np.asarray(Image.fromarray(((coarse + 128).clip(0, 255)).astype(np.uint8)).resize(
      (width, height), Image.BILINEAR), np.float32) - 128
  image = image + blotches + rng.normal(0, rng.uniform(2, 12), (height, width, 3))
  canvas = Image.fromarray(image.clip(0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)
  for _ in range(rng.integers(0, 6)):
    pts = [tuple(p) for p in rng.uniform(0, 1, (2, 2)) * [width, height]]
    draw.line(pts, fill=tuple(int(v) for v in rng.uniform(0, 255, 3)), width=int(rng.integers(1, 4)))
  return np.asarray(canvas).copy()


def render(seed: int, split: str, index: int, image_size: int, max_objects: int = 8):
  """One image and its annotations (`bbox` `[x, y, w, h]`, 1-based `category_id`)."""
  rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
  height = int(image_size * rng.uniform(0.75, 1.0))
  width = int(image_size * rng.uniform(0.75, 1.0))
  image = _background(rng, height, width)
  shapes = []   # [category_id, colour, visible mask]
  target = int(rng.integers(1, max_objects + 1))
  for _ in range(target * 4):
    if len(shapes) == target:
      break
    category = int(rng.integers(len(CATEGORIES)))
    r = float(np.exp(rng.uniform(np.log(6), np.log(0.35 * min(height, width)))))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    mask = _shape_mask(CATEGORIES[category]['name'], height, width, cx, cy, r, rng.uniform(0, 2 * np.pi))
    if mask.sum() < 40:
      continue
    if any((s[2] & ~mask).sum() < _MIN_VISIBLE * s[2].sum() for s in shapes):
      continue
    for s in shapes:
      s[2] &= ~mask
    colour = rng.uniform(0, 255, 3)
    shapes.append([category + 1, colour, mask])
  for category_id, colour, mask in shapes:
    shade = np.clip(colour + rng.normal(0, 6, (int(mask.sum()), 3)), 0, 255)
    image[mask] = shade.astype(np.uint8)
  annotations = []
  for category_id, _, mask in shapes:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    annotations.append({'category_id': category_id, 'iscrowd': 0, 'area': int(mask.sum()),
                        'bbox': [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]})
  return image, annotations


def write_split(root: str, split: str, num_images: int, image_size: int, seed: int) -> str:
  folder = image_dir(root, split)
  os.makedirs(folder, exist_ok=True)
  os.makedirs(os.path.dirname(annotation_path(root, split)), exist_ok=True)
  images, annotations = [], []
  for i in range(num_images):
    pixels, objects = render(seed, split, i, image_size)
    file_name = f'{i:06d}.jpg'
    Image.fromarray(pixels).save(os.path.join(folder, file_name), quality=92)
    images.append({'id': i + 1, 'file_name': file_name, 'height': pixels.shape[0],
                   'width': pixels.shape[1]})
    for obj in objects:
      annotations.append(dict(obj, id=len(annotations) + 1, image_id=i + 1))
  path = annotation_path(root, split)
  with open(path + '.tmp', 'w') as f:
    json.dump({'images': images, 'annotations': annotations, 'categories': CATEGORIES}, f)
  os.replace(path + '.tmp', path)
  return path


def ensure_dataset(root: str, num_train: int, num_val: int, image_size: int, seed: int = 0) -> Dict:
  """Write the dataset under `root` unless the same one is already there."""
  settings = {'num_train': num_train, 'num_val': num_val, 'image_size': image_size, 'seed': seed}
  info = os.path.join(root, _INFO)
  if os.path.exists(info):
    with open(info) as f:
      if json.load(f) == settings:
        return settings
  os.makedirs(root, exist_ok=True)
  write_split(root, 'train', num_train, image_size, seed)
  write_split(root, 'val', num_val, image_size, seed)
  with open(info, 'w') as f:
    json.dump(settings, f)
  return settings


def resolve(config, workdir: str):
  """`data.source='synthetic'`: write the dataset (once) under `data.synthetic.root`,
  default `<workdir>/data`, and return a copy of `config` reading it as COCO-JSON.
  Other configs are returned as they are."""
  if config.data.source != 'synthetic':
    return config
  spec = config.data.synthetic
  root = spec.root or os.path.join(workdir, 'data')
  if '://' in root:
    raise ValueError(f'config.data.synthetic.root={root!r}: the synthetic dataset is written to a '
                     f'local folder; set data.synthetic.root to one')
  if jax.process_index() == 0:
    ensure_dataset(root, spec.num_train, spec.num_val, spec.image_size, spec.seed)
  multihost_utils.sync_global_devices('synthetic dataset written')
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.source = 'coco_json'
    for split, name in ((config.data.train, 'train'), (config.data.val, 'val')):
      split.annotations = annotation_path(root, name)
      split.images = image_dir(root, name)
  return config


def main(argv):
  del argv
  f = flags.FLAGS
  ensure_dataset(f.output, f.num_train, f.num_val, f.image_size, f.seed)
  print(f'wrote {f.num_train} train and {f.num_val} val images to {f.output}; annotations in '
        f'{os.path.dirname(annotation_path(f.output, "train"))}')


if __name__ == '__main__':
  flags.DEFINE_string('output', None, 'dataset folder', required=True)
  flags.DEFINE_integer('num_train', 2000, 'training images')
  flags.DEFINE_integer('num_val', 200, 'validation images')
  flags.DEFINE_integer('image_size', 256, 'longest image side at most')
  flags.DEFINE_integer('seed', 0, 'dataset seed')
  cli.run(main)
