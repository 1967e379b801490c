"""EfficientNet B0-B7 and Lite0-4 backbones returning the level 1-5 feature maps.

Module and parameter names follow the official Keras model (`stem`,
`blocks_N/conv2d`, `tpu_batch_normalization_1`, `se/conv2d_1`, ...), so the
official checkpoints map onto this tree by name.

The Lite backbones (official `efficientnet_lite_builder.py`) are the same
network made easy to quantize: no squeeze-excite, and a fixed stem (32
filters) and first and last stage (unscaled repeats) whatever the width and
depth; their activation (ReLU6) comes from `act_type` like the others'.
"""
import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from effdet_jax.models import layers

# name: (width_coefficient, depth_coefficient)
SCALING = {
    'efficientnet-b0': (1.0, 1.0),
    'efficientnet-b1': (1.0, 1.1),
    'efficientnet-b2': (1.1, 1.2),
    'efficientnet-b3': (1.2, 1.4),
    'efficientnet-b4': (1.4, 1.8),
    'efficientnet-b5': (1.6, 2.2),
    'efficientnet-b6': (1.8, 2.6),
    'efficientnet-b7': (2.0, 3.1),
    'efficientnet-lite0': (1.0, 1.0),
    'efficientnet-lite1': (1.0, 1.1),
    'efficientnet-lite2': (1.1, 1.2),
    'efficientnet-lite3': (1.2, 1.4),
    'efficientnet-lite4': (1.4, 1.8),
}
DEPTH_DIVISOR = 8


@dataclasses.dataclass(frozen=True)
class StageArgs:
  kernel_size: int
  repeats: int
  stride: int
  expand_ratio: int
  input_filters: int
  output_filters: int
  se_ratio: float = 0.25


# The B0 stages; larger models scale filters and repeats.
B0_STAGES = (
    StageArgs(3, 1, 1, 1, 32, 16),
    StageArgs(3, 2, 2, 6, 16, 24),
    StageArgs(5, 2, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(5, 3, 1, 6, 80, 112),
    StageArgs(5, 4, 2, 6, 112, 192),
    StageArgs(3, 1, 1, 6, 192, 320),
)
STEM_FILTERS = 32


def round_filters(filters: int, width_coefficient: float) -> int:
  """Scale a channel count and round to a multiple of 8, never below 90% of it."""
  scaled = filters * width_coefficient
  rounded = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
  if rounded < 0.9 * scaled:
    rounded += DEPTH_DIVISOR
  return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
  return int(math.ceil(depth_coefficient * repeats))


@dataclasses.dataclass(frozen=True)
class BlockArgs:
  kernel_size: int
  stride: int
  expand_ratio: int
  input_filters: int
  output_filters: int
  se_ratio: float


def scaling_of(backbone: str, scaling: Sequence[float] = ()) -> Tuple[float, float]:
  """(width, depth) coefficients: the named backbone's, or `scaling` if given."""
  if scaling:
    if len(scaling) != 2 or min(scaling) <= 0:
      raise ValueError(f'model.backbone_scaling must be (width, depth) > 0, got {scaling}')
    return float(scaling[0]), float(scaling[1])
  if backbone not in SCALING:
    raise ValueError(f'unknown backbone {backbone!r}; expected one of {tuple(SCALING)}')
  return SCALING[backbone]


def is_lite(backbone: str) -> bool:
  return backbone.startswith('efficientnet-lite')


def stem_filters(backbone: str, scaling: Sequence[float] = ()) -> int:
  return STEM_FILTERS if is_lite(backbone) else round_filters(
      STEM_FILTERS, scaling_of(backbone, scaling)[0])


def block_list(backbone: str, scaling: Sequence[float] = ()) -> List[BlockArgs]:
  """Every MBConv block of a scaled EfficientNet, in order.

  A Lite backbone's first block still records the scaled stem width as its
  input (the stem itself is not scaled): the official compares that figure
  with the output width to decide on a residual, so this does too.
  """
  width, depth = scaling_of(backbone, scaling)
  lite = is_lite(backbone)
  blocks = []
  for i, stage in enumerate(B0_STAGES):
    inp = round_filters(stage.input_filters, width)
    out = round_filters(stage.output_filters, width)
    fixed = lite and i in (0, len(B0_STAGES) - 1)
    repeats = stage.repeats if fixed else round_repeats(stage.repeats, depth)
    se_ratio = 0.0 if lite else stage.se_ratio
    for r in range(repeats):
      blocks.append(BlockArgs(stage.kernel_size, stage.stride if r == 0 else 1,
                              stage.expand_ratio, inp if r == 0 else out, out, se_ratio))
  return blocks


class MBConvBlock(nn.Module):
  """Inverted residual: expand 1x1, depthwise, squeeze-excite, project 1x1."""
  args: BlockArgs
  act_type: str
  bn_momentum: float
  bn_epsilon: float
  impl: str
  dtype: Any
  survival_prob: Optional[float] = None

  @nn.compact
  def __call__(self, inputs, train: bool):
    a = self.args
    names = _Namer()
    bn = lambda: layers.batch_norm(train, self.bn_momentum, self.bn_epsilon, self.dtype,
                                   names.next('tpu_batch_normalization'))
    conv1x1 = lambda filters: layers.Conv(filters, 1, use_bias=False, impl=self.impl,
                                          dtype=self.dtype, kernel_init=layers.tf_conv_init,
                                          name=names.next('conv2d'))
    filters = a.input_filters * a.expand_ratio
    x = inputs
    if a.expand_ratio != 1:
      x = layers.activation(bn()(conv1x1(filters)(x)), self.act_type)
    x = layers.DepthwiseConv(a.kernel_size, a.stride, self.impl, self.dtype,
                             name='depthwise_conv2d')(x)
    x = layers.activation(bn()(x), self.act_type)
    gate = None
    if a.se_ratio:
      gate = SqueezeExcite(max(1, int(a.input_filters * a.se_ratio)), self.act_type,
                           self.impl, self.dtype, name='se')(x)
    if gate is not None and not train and self.impl == 'matmul':
      # (x * gate) @ w == x @ (gate * w): scaling each image's weights spares a
      # pass over the widest activation of the block (CPU inference only; the
      # training step keeps the product, whose gradients it is tuned for).
      x = conv1x1(a.output_filters)(x, input_scale=gate)
    else:
      x = conv1x1(a.output_filters)(x if gate is None else x * gate[:, None, None, :])
    x = bn()(x)
    if a.stride == 1 and a.input_filters == a.output_filters:
      if train and self.survival_prob:
        x = layers.drop_connect(x, self.survival_prob, self.make_rng('dropout'))
      x = x + inputs
    return x


class SqueezeExcite(nn.Module):
  """The per-image channel gate, `[batch, channels]`; the block applies it."""
  reduced_filters: int
  act_type: str
  impl: str
  dtype: Any

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = layers.Conv(self.reduced_filters, 1, impl=self.impl, dtype=self.dtype,
                    kernel_init=layers.tf_conv_init, name='conv2d')(s)
    s = layers.Conv(x.shape[-1], 1, impl=self.impl, dtype=self.dtype,
                    kernel_init=layers.tf_conv_init,
                    name='conv2d_1')(layers.activation(s, self.act_type))
    return nn.sigmoid(s[:, 0, 0, :])


class Stem(nn.Module):
  """3x3 stride-2 convolution, BatchNorm, activation."""
  filters: int
  act_type: str
  bn_momentum: float
  bn_epsilon: float
  impl: str
  dtype: Any

  @nn.compact
  def __call__(self, images, train: bool):
    x = layers.Conv(self.filters, 3, 2, use_bias=False, impl=self.impl, dtype=self.dtype,
                    kernel_init=layers.tf_conv_init, name='conv2d')(images)
    x = layers.batch_norm(train, self.bn_momentum, self.bn_epsilon, self.dtype,
                          'tpu_batch_normalization')(x)
    return layers.activation(x, self.act_type)


class EfficientNet(nn.Module):
  """Feature extractor: returns `{level: feature}` for levels 1..5 (strides 2..32)."""
  backbone: str
  act_type: str = 'swish'
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  survival_prob: Optional[float] = None
  impl: str = 'native'
  dtype: Any = jnp.float32
  # (width, depth) coefficients replacing the named backbone's, for small test
  # and demo models; () keeps the backbone's own.
  scaling: Tuple[float, ...] = ()
  # Recompute each block's activations in the backward pass instead of keeping them.
  remat: bool = False

  @nn.compact
  def __call__(self, images, train: bool) -> Dict[int, Any]:
    x = Stem(stem_filters(self.backbone, self.scaling), self.act_type, self.bn_momentum,
             self.bn_epsilon, self.impl, self.dtype, name='stem')(images, train)
    blocks = block_list(self.backbone, self.scaling)
    block_cls = nn.remat(MBConvBlock, static_argnums=(2,)) if self.remat else MBConvBlock
    features = {}
    for idx, args in enumerate(blocks):
      prob = None
      if self.survival_prob:
        prob = 1.0 - (1.0 - self.survival_prob) * idx / len(blocks)
      x = block_cls(args, self.act_type, self.bn_momentum, self.bn_epsilon, self.impl,
                      self.dtype, prob, name=f'blocks_{idx}')(x, train)
      # A feature level ends where the next block downsamples, and at the last block.
      if idx == len(blocks) - 1 or blocks[idx + 1].stride > 1:
        features[len(features) + 1] = x
    return features


class _Namer:
  """Keras layer naming: `name`, `name_1`, `name_2`, ... per prefix."""

  def __init__(self):
    self._counts: Dict[str, int] = {}

  def next(self, prefix: str) -> str:
    n = self._counts.get(prefix, 0)
    self._counts[prefix] = n + 1
    return prefix if n == 0 else f'{prefix}_{n}'


