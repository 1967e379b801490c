"""Small datasets written on the fly for the data tests."""
import io
import itertools
import json
import os

import numpy as np
from PIL import Image

from effdet_jax.configs.efficientdet import get_config
from effdet_jax.data import input_pipeline


def train_batches(config, count: int, **kwargs):
  """The first `count` training batches of host 0 of 1 (`train_data`'s other arguments in kwargs)."""
  data = input_pipeline.train_data(config, process_index=0, process_count=1, **kwargs)
  return list(itertools.islice(data.dataset.as_numpy_iterator(), count))


def encode(array: np.ndarray, fmt: str, mode: str = 'RGB') -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).convert(mode).save(buf, fmt)
  return buf.getvalue()


def coco_config(annotations: str, images: str, image_size=(64, 64), batch=4, num_classes=8):
  c = get_config('d0')
  c.data.source = 'coco_json'
  for split in (c.data.train, c.data.val):
    split.annotations, split.images = annotations, images
  c.data.category_scheme = 'contiguous'
  c.model.num_classes = num_classes
  c.model.image_size = image_size
  c.train.global_batch_size = batch
  return c


# Image by image: what is in the file and which annotations it has. The expected
# counts (BAD_EXPECTED) follow from these lines.
def write_bad_dataset(root: str) -> str:
  """A COCO-JSON set with one of each kind of bad data; returns the annotation path."""
  os.makedirs(os.path.join(root, 'images'), exist_ok=True)
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
  files = {
      'rgb.jpg': encode(pixels, 'JPEG'),
      'gray.jpg': encode(pixels, 'JPEG', 'L'),
      'rgba.png': encode(pixels, 'PNG', 'RGBA'),
      'cmyk.jpg': encode(pixels, 'JPEG', 'CMYK'),
      'empty.jpg': encode(pixels, 'JPEG'),
      'corrupt.jpg': b'\xff\xd8 this is not a jpeg',
      'many.png': encode(pixels, 'PNG'),
  }
  for name, data in files.items():
    with open(os.path.join(root, 'images', name), 'wb') as f:
      f.write(data)
  names = ['rgb.jpg', 'gray.jpg', 'rgba.png', 'cmyk.jpg', 'empty.jpg', 'missing.jpg', 'corrupt.jpg',
           'many.png']
  images = [{'id': 10 + i, 'file_name': n, 'height': 48, 'width': 64} for i, n in enumerate(names)]
  ann = []

  def add(image_id, bbox, category_id=1, crowd=0):
    ann.append({'id': len(ann) + 1, 'image_id': image_id, 'bbox': bbox, 'category_id': category_id,
                'iscrowd': crowd, 'area': 1.0})

  add(10, [5, 5, 10, 10])                   # kept
  add(10, [50, 40, 30, 20])                 # kept, clipped
  add(10, [100, 100, 5, 5])                 # outside_image
  add(10, [3, 3, 0, 5])                     # zero_area
  add(10, [10, 10, -5, 5])                  # negative_size
  add(10, [10, 10, 5, 5], category_id=99)   # unknown_category
  add(10, [1, 1, 20, 20], crowd=1)          # crowd
  add(10, [float('nan'), 1, 2, 2])          # non_finite
  add(11, [2, 2, 30, 30], category_id=7)    # kept (class 1)
  add(12, [2, 2, 30, 30])                   # kept
  add(13, [2, 2, 30, 30])                   # kept
  add(15, [2, 2, 30, 30])                   # image_skipped (missing file)
  add(15, [4, 4, 30, 30])                   # image_skipped (missing file)
  add(16, [2, 2, 30, 30])                   # image_skipped (undecodable)
  for i in range(5):                        # 3 kept, 2 over_max_instances (max 3)
    add(17, [i * 10, 2, 8, 8])
  add(999, [1, 1, 5, 5])                    # annotation_without_image
  path = os.path.join(root, 'annotations.json')
  with open(path, 'w') as f:
    json.dump({'images': images, 'annotations': ann,
               'categories': [{'id': 1, 'name': 'thing'}, {'id': 7, 'name': 'other'}]}, f)
  return path


BAD_MAX_INSTANCES = 3
BAD_EXPECTED = {
    'images': 6,
    'images_skipped': {'missing_file': 1, 'undecodable': 1},
    'boxes': 8,
    'boxes_dropped': {'image_skipped': 3, 'unknown_category': 1, 'crowd': 1, 'non_finite': 1,
                      'negative_size': 1, 'zero_area': 1, 'outside_image': 1,
                      'over_max_instances': 2, 'annotation_without_image': 1},
    'boxes_clipped': 1,
    'categories': 2,
}
