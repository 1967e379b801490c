import glob
import os

from absl import flags
from flax import traverse_util
import jax
import pytest
from ml_collections import config_flags

from effdet_jax.configs import efficientdet, finetune
from effdet_jax.models.variables import abstract_variables
from effdet_jax.tools import sweep
from effdet_jax.training import optim


def test_official_settings_per_size():
  d0 = efficientdet.get_config('d0').model
  assert (d0.backbone, d0.image_size, d0.fpn_num_filters, d0.fpn_cell_repeats,
          d0.box_class_repeats) == ('efficientnet-b0', (512, 512), 64, 3, 3)
  assert d0.fpn_weight_method == 'fastattn' and d0.backbone_survival_prob == 0.0
  assert (d0.min_level, d0.max_level, d0.num_classes, d0.anchor_scale) == (3, 7, 90, 4.0)
  assert (d0.batch_norm_momentum, d0.batch_norm_epsilon, d0.act_type) == (0.99, 1e-3, 'swish')
  d6 = efficientdet.get_config('d6').model
  assert d6.fpn_weight_method == 'sum' and d6.backbone_survival_prob == 0.8
  d7 = efficientdet.get_config('d7').model
  assert (d7.backbone, d7.image_size, d7.anchor_scale, d7.max_level) == (
      'efficientnet-b6', (1536, 1536), 5.0, 7)
  d7x = efficientdet.get_config('d7x').model
  assert (d7x.backbone, d7x.anchor_scale, d7x.max_level) == ('efficientnet-b7', 4.0, 8)
  train = efficientdet.get_config('d0').train
  assert train.learning_rate == pytest.approx(0.16) and train.global_batch_size == 128
  assert efficientdet.get_config('d7').train.num_epochs == 600


def test_unknown_size_is_rejected():
  with pytest.raises(ValueError, match='unknown EfficientDet size'):
    efficientdet.get_config('d9')


def test_command_line_overrides():
  argv = ['prog', f'--config={efficientdet.__file__}:d2', '--config.model.fpn_num_filters=96',
          '--config.model.fpn_weight_method=attn']
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, sys_argv=argv)
  fv(argv)
  assert fv.config.model.name == 'efficientdet-d2'
  assert fv.config.model.fpn_num_filters == 96
  assert fv.config.model.fpn_weight_method == 'attn'


def test_paper_recipe_for_every_size():
  for name in efficientdet.MODEL_NAMES:
    c = efficientdet.get_config(name)
    assert c.train.global_batch_size == 128 and c.train.learning_rate == pytest.approx(0.16)
    assert c.train.num_epochs == (600 if name in ('d7', 'd7x') else 300), name
    assert (c.data.jitter_min, c.data.jitter_max) == (0.1, 2.0)


def test_finetune_config_freezes_backbone_and_bifpn_only():
  config = finetune.get_config('d0')
  assert config.model.num_classes == 20 and config.data.source == 'coco_json'
  assert config.data.category_scheme == 'contiguous'
  abstract = abstract_variables(config)
  layout = optim.ParamLayout(abstract, config.train.freeze_regex)
  paths = ['/'.join(k) for k in traverse_util.flatten_dict(abstract['params'])]
  assert len(paths) == len(layout.tensor_trainable) == len(jax.tree.leaves(abstract['params']))
  for path, value in zip(paths, layout.tensor_trainable):
    frozen = path.split('/')[0] in ('backbone', 'fpn_cells', 'resample_p6')
    assert value == (0.0 if frozen else 1.0), path
  assert 0 < layout.frozen_tensors < len(paths)


def test_shipped_sweeps_expand(tmp_path):
  files = sorted(glob.glob(os.path.join(os.path.dirname(efficientdet.__file__), 'sweeps', '*.py')))
  assert len(files) == 2
  counts = {os.path.basename(f): len(sweep.expand(sweep.load_sweep(f), str(tmp_path), f))
            for f in files}
  assert counts == {'d0_coco.py': 4, 'shapes_lr.py': 6}


def _another_value(value):
  """A value of the same type as `value`, different from it, and its command-line text."""
  if isinstance(value, bool):
    return (not value), str(not value)
  if isinstance(value, int):
    return value + 1, str(value + 1)
  if isinstance(value, float):
    return value + 0.5, repr(value + 0.5)
  if isinstance(value, str):
    return value + 'x', value + 'x'
  if isinstance(value, tuple):
    new = tuple(_another_value(v)[0] for v in value) if value else (0.5, 0.5)
    return new, repr(new)
  raise AssertionError(f'no command-line form for {value!r}')


CONFIG_FILES = [(efficientdet.__file__, name) for name in efficientdet.MODEL_NAMES] + [
    (os.path.join(os.path.dirname(efficientdet.__file__), 'shapes.py'), ''),
    (finetune.__file__, 'd0')]


@pytest.mark.parametrize('path,arg', CONFIG_FILES, ids=lambda v: os.path.basename(str(v)))
def test_every_field_can_be_set_from_the_command_line(path, arg):
  spec = f'{path}:{arg}' if arg else path
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, sys_argv=['prog'])
  fv(['prog', f'--config={spec}'])
  leaves = traverse_util.flatten_dict(fv.config.to_dict())
  wanted, argv = {}, ['prog', f'--config={spec}']
  for key, value in leaves.items():
    new, text = _another_value(value)
    wanted[key] = new
    argv.append(f'--config.{".".join(key)}={text}')
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, sys_argv=argv)
  fv(argv)
  got = traverse_util.flatten_dict(fv.config.to_dict())
  assert got.keys() == wanted.keys()
  for key, value in wanted.items():
    assert got[key] == value, key
