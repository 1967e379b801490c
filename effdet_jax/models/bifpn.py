"""Weighted bi-directional FPN (BiFPN) with the official node graph and names."""
import dataclasses
from typing import Any, List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from effdet_jax.models import layers

FUSION_METHODS = ('fastattn', 'attn', 'sum')
FAST_ATTN_EPSILON = 1e-4


def bifpn_nodes(min_level: int, max_level: int) -> List[Tuple[int, Tuple[int, ...]]]:
  """The official BiFPN graph as `(level, input node ids)` per new node.

  Node ids 0..L-1 are the input levels min..max; each new node gets the next id.
  Top-down nodes fuse a level with the level above; bottom-up nodes fuse every
  node of a level with the newest node of the level below.
  """
  ids = {level: [i] for i, level in enumerate(range(min_level, max_level + 1))}
  next_id = max_level - min_level + 1
  nodes = []
  for level in range(max_level - 1, min_level - 1, -1):
    nodes.append((level, (ids[level][-1], ids[level + 1][-1])))
    ids[level].append(next_id)
    next_id += 1
  for level in range(min_level + 1, max_level + 1):
    nodes.append((level, tuple(ids[level]) + (ids[level - 1][-1],)))
    ids[level].append(next_id)
    next_id += 1
  return nodes


@dataclasses.dataclass(frozen=True)
class FPNSettings:
  """What every BiFPN node shares."""
  num_channels: int
  weight_method: str
  act_type: str
  apply_bn_for_resampling: bool
  conv_after_downsample: bool
  bn_momentum: float
  bn_epsilon: float
  impl: str
  dtype: Any
  upsample_in_float32: bool = False

  def resample(self, name: str) -> 'ResampleFeatureMap':
    return ResampleFeatureMap(self.num_channels, self.apply_bn_for_resampling,
                              self.conv_after_downsample, self.bn_momentum, self.bn_epsilon,
                              self.impl, self.dtype, self.upsample_in_float32, name=name)


class ResampleFeatureMap(nn.Module):
  """Match a feature map to a target level: 1x1 conv + BN if the width differs,
  then 3x3/2 `SAME` max-pool to go down or nearest-neighbour to go up.

  `upsample_in_float32` resizes in float32 whatever the dtype, as the official's
  `_upsample2d` casts: a float64 model then rounds these activations, and their
  gradients, to float32 as the official float64 model does (`model.upsample_in_float32`).
  """
  num_channels: int
  apply_bn: bool
  conv_after_downsample: bool
  bn_momentum: float
  bn_epsilon: float
  impl: str
  dtype: Any
  upsample_in_float32: bool = False

  def _match_width(self, x, train):
    if x.shape[-1] == self.num_channels:
      return x
    x = layers.Conv(self.num_channels, 1, impl=self.impl, dtype=self.dtype, name='conv2d')(x)
    if self.apply_bn:
      x = layers.batch_norm(train, self.bn_momentum, self.bn_epsilon, self.dtype, 'bn')(x)
    return x

  @nn.compact
  def __call__(self, x, target_hw: Tuple[int, int], train: bool):
    height, width = x.shape[1:3]
    target_h, target_w = target_hw
    if height > target_h and width > target_w:
      if not self.conv_after_downsample:
        x = self._match_width(x, train)
      stride_h = (height - 1) // target_h + 1
      stride_w = (width - 1) // target_w + 1
      x = layers.max_pool_same(x, (stride_h + 1, stride_w + 1), (stride_h, stride_w))
      if self.conv_after_downsample:
        x = self._match_width(x, train)
      return x
    if height <= target_h and width <= target_w:
      x = self._match_width(x, train)
      if height < target_h or width < target_w:
        if self.upsample_in_float32:
          x = layers.resize_nearest(x.astype(jnp.float32), target_h, target_w).astype(x.dtype)
        else:
          x = layers.resize_nearest(x, target_h, target_w)
      return x
    raise ValueError(f'cannot resample a {height}x{width} feature map to {target_h}x{target_w}')


class FNode(nn.Module):
  """One BiFPN node: resample inputs, fuse them with learned weights, then
  activation, separable conv and BN."""
  level_index: int
  inputs_offsets: Tuple[int, ...]
  settings: FPNSettings

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array], train: bool) -> List[jax.Array]:
    c = self.settings
    target_hw = feats[self.level_index].shape[1:3]
    nodes = [c.resample(f'resample_{i}_{offset}_{len(feats)}')(feats[offset], target_hw, train)
             for i, offset in enumerate(self.inputs_offsets)]
    x = layers.activation(self._fuse(nodes), c.act_type)
    x = OpAfterCombine(c, name=f'op_after_combine{len(feats)}')(x, train)
    return list(feats) + [x]

  def _fuse(self, nodes: List[jax.Array]) -> jax.Array:
    method = self.settings.weight_method
    if method == 'sum':
      return sum(nodes[1:], nodes[0])
    if method not in FUSION_METHODS:
      raise ValueError(f'model.fpn_weight_method must be one of {FUSION_METHODS}, '
                       f'got {method!r}')
    dtype = nodes[0].dtype
    weights = [self.param('WSM' if i == 0 else f'WSM_{i}', nn.initializers.ones, ()).astype(dtype)
               for i in range(len(nodes))]
    if method == 'attn':
      normalized = jax.nn.softmax(jnp.stack(weights))
      return sum(n * normalized[i] for i, n in enumerate(nodes))
    weights = [jax.nn.relu(w) for w in weights]
    total = sum(weights[1:], weights[0]) + FAST_ATTN_EPSILON
    fused = [n * w / total for n, w in zip(nodes, weights)]
    return sum(fused[1:], fused[0])


class OpAfterCombine(nn.Module):
  settings: FPNSettings

  @nn.compact
  def __call__(self, x, train: bool):
    c = self.settings
    x = layers.SeparableConv(c.num_channels, 3, impl=c.impl, dtype=c.dtype, name='conv')(x)
    return layers.batch_norm(train, c.bn_momentum, c.bn_epsilon, c.dtype, 'bn')(x)


class FPNCell(nn.Module):
  nodes: Sequence[Tuple[int, Tuple[int, ...]]]
  min_level: int
  settings: FPNSettings

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array], train: bool) -> List[jax.Array]:
    feats = list(feats)
    for i, (level, offsets) in enumerate(self.nodes):
      feats = FNode(level - self.min_level, tuple(offsets), self.settings,
                    name=f'fnode{i}')(feats, train)
    return feats


class BiFPN(nn.Module):
  """`num_cells` BiFPN cells (`fpn_cells/cell_N/fnodeM`); returns one map per level."""
  min_level: int
  max_level: int
  num_cells: int
  settings: FPNSettings
  remat: bool = False   # recompute each cell in the backward pass

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array], train: bool) -> List[jax.Array]:
    nodes = tuple(bifpn_nodes(self.min_level, self.max_level))
    # Each level's output is the newest node of that level.
    output_ids = [len(feats) + max(i for i, (lvl, _) in enumerate(nodes) if lvl == level)
                  for level in range(self.min_level, self.max_level + 1)]
    cell_cls = nn.remat(FPNCell, static_argnums=(2,)) if self.remat else FPNCell
    for rep in range(self.num_cells):
      all_feats = cell_cls(nodes, self.min_level, self.settings, name=f'cell_{rep}')(feats, train)
      feats = [all_feats[i] for i in output_ids]
    return feats
