"""EfficientDet: EfficientNet backbone, extra levels, BiFPN, class and box heads."""
from typing import List, Tuple

import flax.linen as nn
import jax
import ml_collections

from effdet_jax.models import layers
from effdet_jax.models.bifpn import BiFPN, FPNSettings
from effdet_jax.models.efficientnet import EfficientNet
from effdet_jax.models.heads import Head, class_bias_init
from effdet_jax.runtime import precision


class EfficientDet(nn.Module):
  """Maps normalized NHWC images to per-level `(class_outputs, box_outputs)`.

  Outputs are lists ordered from `min_level` to `max_level`, pre-sigmoid, with
  the official channel layouts `anchor * num_classes + class` and
  `anchor * 4 + coord`.
  """
  config: ml_collections.ConfigDict  # the `model` section of a config

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False
               ) -> Tuple[List[jax.Array], List[jax.Array]]:
    c = self.config
    impl = layers.resolve_conv_impl(c.conv_impl)
    dtype = precision.compute_dtype(c.dtype)
    if c.max_level < 5 or c.min_level > 5 or c.min_level < 1:
      raise ValueError(f'model.min_level..max_level must include level 5 and start at >= 1, '
                       f'got {c.min_level}..{c.max_level}')
    bn = dict(bn_momentum=c.batch_norm_momentum, bn_epsilon=c.batch_norm_epsilon)
    features = EfficientNet(c.backbone, c.act_type, survival_prob=c.backbone_survival_prob,
                            impl=impl, dtype=dtype, scaling=tuple(c.backbone_scaling),
                            remat=c.remat, name='backbone', **bn)(images, train)
    fpn = FPNSettings(c.fpn_num_filters, c.fpn_weight_method, c.act_type,
                      c.apply_bn_for_resampling, c.conv_after_downsample, impl=impl,
                      dtype=dtype, **bn,
                      # bundles written before the field existed lack it
                      upsample_in_float32=c.get('upsample_in_float32', False))
    feats = [features[level] for level in range(c.min_level, 6)]
    for level in range(6, c.max_level + 1):
      height, width = feats[-1].shape[1:3]
      feats.append(fpn.resample(f'resample_p{level}')(
          feats[-1], ((height + 1) // 2, (width + 1) // 2), train))
    feats = BiFPN(c.min_level, c.max_level, c.fpn_cell_repeats, fpn, remat=c.remat,
                  name='fpn_cells')(
        feats, train)
    num_anchors = c.num_scales * len(c.aspect_ratios)
    head = dict(num_anchors=num_anchors, num_filters=c.fpn_num_filters,
                repeats=c.box_class_repeats, min_level=c.min_level, act_type=c.act_type,
                survival_prob=c.head_survival_prob, impl=impl, dtype=dtype, **bn)
    class_outputs = Head('class', c.num_classes, predict_bias_init=class_bias_init,
                         name='class_net', **head)(feats, train)
    box_outputs = Head('box', 4, name='box_net', **head)(feats, train)
    return class_outputs, box_outputs
