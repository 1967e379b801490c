"""Class and box heads: separable convs shared across levels, BatchNorm per level."""
from typing import Any, List, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np

from effdet_jax.models import layers

PRIOR_PROBABILITY = 0.01
_head_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


class Head(nn.Module):
  """`repeats` x (separable conv, per-level BN, activation), then a predictor.

  `prefix` is `class` or `box`, giving the official names `class-0`,
  `class-0-bn-3`, `class-predict`.
  """
  prefix: str
  outputs_per_anchor: int
  num_anchors: int
  num_filters: int
  repeats: int
  min_level: int
  act_type: str
  bn_momentum: float
  bn_epsilon: float
  survival_prob: Optional[float]
  impl: str
  dtype: Any
  predict_bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array], train: bool) -> List[jax.Array]:
    convs = [layers.SeparableConv(self.num_filters, 3, impl=self.impl, dtype=self.dtype,
                                  depthwise_init=_head_init, pointwise_init=_head_init,
                                  name=f'{self.prefix}-{i}') for i in range(self.repeats)]
    predict = layers.SeparableConv(self.num_anchors * self.outputs_per_anchor, 3,
                                   impl=self.impl, dtype=self.dtype,
                                   depthwise_init=_head_init, pointwise_init=_head_init,
                                   bias_init=self.predict_bias_init,
                                   name=f'{self.prefix}-predict')
    outputs = []
    for level_id, x in enumerate(feats):
      level = self.min_level + level_id
      for i, conv in enumerate(convs):
        residual = x
        x = conv(x)
        x = layers.batch_norm(train, self.bn_momentum, self.bn_epsilon, self.dtype,
                              f'{self.prefix}-{i}-bn-{level}')(x)
        x = layers.activation(x, self.act_type)
        if i > 0 and self.survival_prob:
          if train:
            x = layers.drop_connect(x, self.survival_prob, self.make_rng('dropout'))
          x = x + residual
      outputs.append(predict(x))
    return outputs


def class_bias_init(key, shape, dtype=np.float32):
  """Bias so that every anchor starts at the prior probability of an object."""
  del key
  return np.full(shape, -np.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY), dtype)
