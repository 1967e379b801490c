"""A trained model in the layout of google/automl's released checkpoints, so it
reaches the official tools (its TFLite and TensorRT exporters, model_inspect).

Every variable under its official name (`efficientnet-b0/stem/conv2d/kernel`,
`fpn_cells/cell_0/fnode0/WSM`, `class_net/class-bn-0/moving_mean`, ...) with its
raw (trained) value, the same name plus `/ExponentialMovingAverage` for its EMA
(BatchNorm statistics included, as the released checkpoints and TF1's
`ExponentialMovingAverage` have them), and `global_step`; float32, as released.
`official_checkpoint.load_official_checkpoint` reads it back to the same variables.
"""
import os
from typing import Dict, Optional

import ml_collections
import numpy as np
import tensorflow as tf

from effdet_jax.models import official_checkpoint

PREFIX = 'model'


def official_tensors(config: ml_collections.ConfigDict, raw, ema, step: int) -> Dict[str, np.ndarray]:
  """`{name: array}` of the checkpoint: raw weights, their EMA (if given) and `global_step`."""
  tensors = {k: v.astype(np.float32) for k, v in official_checkpoint.official_variables(raw, config).items()}
  if ema is not None:
    tensors.update({k + official_checkpoint.EMA_SUFFIX: v.astype(np.float32)
                    for k, v in official_checkpoint.official_variables(ema, config).items()})
  tensors['global_step'] = np.asarray(step, np.int64)
  return tensors


def write_tf_checkpoint(directory: str, config: ml_collections.ConfigDict, raw,
                        ema: Optional[dict], step: int) -> str:
  """Write `DIR/model.index`, `DIR/model.data-*` and `DIR/checkpoint`; returns the prefix."""
  tf.io.gfile.makedirs(directory)
  tensors = official_tensors(config, raw, ema, step)
  names = sorted(tensors)
  prefix = os.path.join(directory, PREFIX)
  # SaveV2 writes a name-based (TF1-style) checkpoint, the released format; the
  # object-based tf.train.Checkpoint would nest every name under an object graph.
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  tf.compat.v1.train.update_checkpoint_state(directory, PREFIX)
  return prefix
