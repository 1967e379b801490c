"""Parameter counts and forward FLOPs of a config's model, without running it.

    python -m effdet_jax.tools.model_stats --config effdet_jax/configs/efficientdet.py:d3
"""
import json

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_flags

from effdet_jax.models import build_model, image_hw
from effdet_jax.models.variables import abstract_variables
from effdet_jax.runtime import cli

FLAGS = flags.FLAGS


def count_params(config: ml_collections.ConfigDict, variables=None):
  """(trainable, total) parameter counts; total includes the BN statistics.

  `variables` (or their shapes) spares building the model's abstract variables.
  """
  shapes = abstract_variables(config) if variables is None else variables
  trainable = count(shapes['params'])
  return trainable, trainable + count(shapes.get('batch_stats', {}))


def count(tree) -> int:
  """The number of numbers in a tree of arrays or shapes."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def forward_flops(config: ml_collections.ConfigDict, batch_size: int = 1) -> float:
  """FLOPs (2 per multiply-add) of one inference forward pass, from XLA's cost analysis."""
  model = build_model(config)
  variables = abstract_variables(config)
  images = jax.ShapeDtypeStruct((batch_size, *image_hw(config), 3), jnp.float32)
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images)
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


def main(argv):
  del argv
  config = FLAGS.config
  trainable, total = count_params(config)
  flops = forward_flops(config)
  stats = {'model': config.model.name, 'image_size': list(image_hw(config)),
           'trainable_params': trainable, 'total_params': total,
           'forward_gflops': round(flops / 1e9, 3), 'forward_gmacs': round(flops / 2e9, 3)}
  print(f"{stats['model']}: {trainable:,} trainable / {total:,} total parameters, "
        f"{stats['forward_gmacs']:.2f} B multiply-adds ({stats['forward_gflops']:.2f} GFLOPs) "
        f"at {stats['image_size'][0]}x{stats['image_size'][1]}")
  print(json.dumps(stats))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'e.g. effdet_jax/configs/efficientdet.py:d0')
  flags.mark_flags_as_required(['config'])
  cli.run(main)
