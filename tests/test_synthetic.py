"""The synthetic shapes dataset: deterministic, tight boxes, valid COCO-JSON."""
import numpy as np

from effdet_jax.data import coco_json, synthetic


def test_render_is_deterministic_and_boxes_are_tight():
  a_image, a_ann = synthetic.render(0, 'train', 5, 96)
  b_image, b_ann = synthetic.render(0, 'train', 5, 96)
  np.testing.assert_array_equal(a_image, b_image)
  assert a_ann == b_ann and len(a_ann) >= 1
  c_image, _ = synthetic.render(0, 'val', 5, 96)
  assert not np.array_equal(a_image[:10, :10], c_image[:10, :10])
  for ann in a_ann:
    x, y, w, h = ann['bbox']
    assert w > 0 and h > 0 and 0 <= x and x + w <= a_image.shape[1] and y + h <= a_image.shape[0]
    assert 1 <= ann['category_id'] <= len(synthetic.CATEGORIES)
    assert 0 < ann['area'] <= w * h


def test_dataset_reads_back_and_is_not_rewritten(tmp_path):
  root = str(tmp_path)
  synthetic.ensure_dataset(root, num_train=6, num_val=3, image_size=64)
  coco = coco_json.read_annotations(synthetic.annotation_path(root, 'train'))
  assert len(coco) == 6 and len(coco.categories) == 5 and len(coco.boxes) >= 6
  stamp = (tmp_path / 'train' / '000000.jpg').stat().st_mtime_ns
  synthetic.ensure_dataset(root, num_train=6, num_val=3, image_size=64)
  assert (tmp_path / 'train' / '000000.jpg').stat().st_mtime_ns == stamp
  sizes = [synthetic.render(0, 'train', i, 256)[0].shape[:2] for i in range(20)]
  counts = [len(synthetic.render(0, 'train', i, 256)[1]) for i in range(20)]
  assert len(set(sizes)) > 5 and max(counts) > 3       # varied sizes, several objects
