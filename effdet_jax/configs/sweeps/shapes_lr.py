"""The demo's learning rate and length: 3 x 2 runs of effdet_jax/configs/shapes.py.

    python -m effdet_jax.tools.sweep run --sweep effdet_jax/configs/sweeps/shapes_lr.py --root runs/shapes_lr
    python -m effdet_jax.tools.sweep summary --root runs/shapes_lr
"""
from effdet_jax.tools.sweep import Sweep, product


def get_sweep():
  return Sweep(config='effdet_jax/configs/shapes.py',
               points=product({'train.learning_rate': [0.08, 0.16, 0.32],
                               'train.num_steps': [2000, 3600]}))
