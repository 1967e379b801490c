"""EfficientDet-Lite: the official Lite0 network outputs from an official-layout
checkpoint, and the Lite settings the other sizes share.

(Every Lite size's parameter counts are checked in test_param_counts.py.)
"""
import os

import jax
import numpy as np
import pytest

from effdet_jax.configs.efficientdet import get_config
from effdet_jax.models import build_model, efficientnet
from effdet_jax.models import official_checkpoint as official
from conftest import require_parity


@pytest.fixture(scope='module')
def parity():
  return require_parity('efficientdet-lite0')


@pytest.fixture(scope='module')
def lite0_forward():
  model = build_model(get_config('lite0'))
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def normalized_input(parity):
  model = get_config('lite0').model
  images = np.load(os.path.join(parity, 'input.npy')).astype(np.float32)
  return (images - np.float32(model.mean_rgb)) / np.float32(model.stddev_rgb)


def max_abs_error(outputs, ref):
  """Max |ours - official| over every level's box outputs and the stored class logits."""
  class_outputs, box_outputs = outputs
  subset = ref['class_subset']
  errors = []
  for i, level in enumerate(range(3, 8)):
    logits = np.asarray(class_outputs[i]).reshape(*class_outputs[i].shape[:3], 9, 90)
    assert logits[..., subset].shape == ref[f'class_{level}'].shape
    errors.append(np.abs(logits[..., subset] - ref[f'class_{level}']).max())
    errors.append(np.abs(np.asarray(box_outputs[i]) - ref[f'box_{level}']).max())
  return max(errors)


def test_official_lite0_outputs(parity, lite0_forward):
  """float32 against the official float64 outputs: measured 4e-5 on outputs of
  magnitude ~13 (the official float32 run is itself 4e-5 from float64).

  Levels 40, 20, 10, 5, 3: 320 is not a multiple of 2**7, so this also checks
  the rounding-up level sizes and the 3 -> 5 nearest-neighbour upsampling.
  """
  variables = official.load_official_checkpoint(os.path.join(parity, 'ckpt'),
                                               get_config('lite0'))
  ref = np.load(os.path.join(parity, 'ref_outputs_float64.npz'))
  assert max_abs_error(lite0_forward(variables, normalized_input(parity)), ref) < 1e-4
  raw = official.load_official_checkpoint(os.path.join(parity, 'ckpt'), get_config('lite0'),
                                         use_ema=False)
  assert max_abs_error(lite0_forward(raw, normalized_input(parity)), ref) > 1e-2


def test_official_lite0_outputs_in_float64(parity):
  """float64 with the official's float32 upsampling (`model.upsample_in_float32`):
  measured 2.7e-14 (without that cast 2.4e-6, the rounding the official does)."""
  config = get_config('lite0')
  config.model.dtype = 'float64'
  config.model.upsample_in_float32 = True
  ref = np.load(os.path.join(parity, 'ref_outputs_float64.npz'))
  with jax.enable_x64(True):
    variables = official.load_official_checkpoint(os.path.join(parity, 'ckpt'), config)
    variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
    model = config.model
    images = np.load(os.path.join(parity, 'input.npy')).astype(np.float64)
    images = (images - np.float32(model.mean_rgb)) / np.float32(model.stddev_rgb)
    outputs = jax.jit(lambda v, x: build_model(config).apply(v, x, train=False))(variables, images)
    assert outputs[1][0].dtype == np.float64
    assert max_abs_error(outputs, ref) < 1e-12


def test_lite_backbones_have_no_squeeze_excite_and_a_fixed_stem_and_ends():
  b4 = efficientnet.block_list('efficientnet-b4')
  lite4 = efficientnet.block_list('efficientnet-lite4')
  assert efficientnet.stem_filters('efficientnet-b4') == 48
  assert efficientnet.stem_filters('efficientnet-lite4') == 32
  assert all(b.se_ratio == 0 for b in lite4) and all(b.se_ratio > 0 for b in b4)
  # Same widths; the first (16 -> 24 filters) and last (320 -> 448) stages keep
  # one block each in Lite, where B4 scales them to 2.
  assert sorted({b.output_filters for b in lite4}) == sorted({b.output_filters for b in b4})
  count = lambda blocks, width: sum(b.output_filters == width for b in blocks)
  assert (count(b4, 24), count(lite4, 24)) == (2, 1)
  assert (count(b4, 448), count(lite4, 448)) == (2, 1)
  assert len(b4) - len(lite4) == 2


@pytest.mark.parametrize('name', ['lite0', 'lite1', 'lite2', 'lite3', 'lite3x', 'lite4'])
def test_lite_configs_are_the_official_ones(name):
  m = get_config(name).model
  assert m.act_type == 'relu6' and m.fpn_weight_method == 'sum'
  assert tuple(m.mean_rgb) == (127.0,) * 3 and tuple(m.stddev_rgb) == (128.0,) * 3
  assert m.anchor_scale == (4.0 if name in ('lite3', 'lite4') else 3.0)
  assert m.backbone_survival_prob == 0.8   # the official keeps it (only B0 turns it off)
  assert m.name == f'efficientdet-{name}'
