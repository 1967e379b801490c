"""A tiny EfficientDet and synthetic data for training tests (compiles in seconds on CPU).

Usable as a config file: `--config tests/tiny_train_config.py:/path/to/data`.
"""
from effdet_jax.configs.efficientdet import get_config as base_config
from effdet_jax.data import synthetic


def get_config(data_root: str = '/tmp/effdet_tiny_data'):
  c = base_config('d0')
  m = c.model
  m.backbone_scaling = (0.25, 0.2)
  m.image_size = (64, 64)
  m.min_level, m.max_level = 3, 5
  m.num_classes = 5
  m.fpn_num_filters = 16
  m.fpn_cell_repeats = 1
  m.box_class_repeats = 1
  c.data.source = 'coco_json'
  c.data.category_scheme = 'contiguous'
  c.data.max_instances_per_image = 10
  for split, name in ((c.data.train, 'train'), (c.data.val, 'val')):
    split.annotations = synthetic.annotation_path(data_root, name)
    split.images = synthetic.image_dir(data_root, name)
  c.train.global_batch_size = 4
  # A low learning rate keeps training tame: runs that differ only in float
  # summation order (devices, hosts) stay close (the exactness tests run in float64).
  c.train.num_steps = 30
  c.train.warmup_steps = 5
  c.train.learning_rate = 0.02
  c.train.log_every_steps = 5
  c.train.checkpoint_every_steps = 5
  return c


def write_data(data_root: str):
  synthetic.ensure_dataset(data_root, num_train=16, num_val=8, image_size=64, seed=1)
