"""Fine-tune an official COCO checkpoint on a COCO-JSON dataset (the official
Pascal VOC recipe: 20 classes, backbone and BiFPN frozen, 50 epochs).

    python -m effdet_jax.main --config effdet_jax/configs/finetune.py:d0 --workdir runs/voc \
        --config.train.init_checkpoint=efficientdet-d0.tar.gz \
        --config.data.train.annotations=voc/annotations/train.json \
        --config.data.train.images=voc/JPEGImages \
        --config.data.val.annotations=voc/annotations/val.json \
        --config.data.val.images=voc/JPEGImages

Another dataset: set `model.num_classes` to its number of categories (they
become classes 0..K-1 in id order); the checkpoint's class head, of another
size, starts fresh, everything else from the checkpoint. `train.freeze_regex=''`
trains the whole network.
"""
from effdet_jax.configs.efficientdet import get_config as efficientdet_config


def get_config(arg: str = 'd0'):
  config = efficientdet_config(arg)
  config.model.num_classes = 20
  config.data.source = 'coco_json'
  config.data.category_scheme = 'contiguous'
  config.data.categories = ''
  config.train.global_batch_size = 64
  config.train.num_epochs = 50
  config.train.learning_rate = 0.08
  # The official VOC recipe's var_freeze_expr '(efficientnet|fpn_cells|resample_p6)'.
  config.train.freeze_regex = '^(backbone|fpn_cells|resample_p6)/'
  config.train.eval_every_steps = 1000
  return config
