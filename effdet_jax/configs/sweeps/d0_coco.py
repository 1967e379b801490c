"""D0 on COCO: the paper's recipe and two learning rates at each of two batch
sizes (learning rate and batch zipped), on a TPU pod.

    python -m effdet_jax.tools.sweep print --sweep effdet_jax/configs/sweeps/d0_coco.py \
        --root gs://BUCKET/runs/d0_coco \
        --launcher tpu --launcher_args='--name pod --zone us-central2-b --bucket gs://BUCKET'
"""
from effdet_jax.tools.sweep import Sweep, product, zipped


def get_sweep():
  batch_and_lr = zipped({'train.global_batch_size': [64, 128],
                         'train.learning_rate': [0.08, 0.16]})
  scale = product({'train.lr_warmup_epochs': [1.0, 5.0]})
  return Sweep(config='effdet_jax/configs/efficientdet.py:d0',
               points=[{**a, **b} for a in batch_and_lr for b in scale])
