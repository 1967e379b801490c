"""One loader for every weights path the project accepts.

What a path is, decided in this order:
1. a training workdir (its latest checkpoint) or one of its `checkpoints/<step>`
   directories: the raw and the EMA weights of that step;
2. a directory holding `variables/` (from `tools.convert`, or an export
   bundle): one set of weights;
3. anything else is read as an official TF checkpoint (a directory, a prefix
   with its `.index` file, or a released `.tar.gz`): one set, the EMA weights
   when it has them (see `official_checkpoint.load_official_checkpoint`).
Training (`train.init_checkpoint`), evaluation, prediction and export all read
weights through `load_weights`.
"""
import dataclasses
import os
from typing import Any, Optional, Tuple

import jax
import ml_collections
import tensorflow as tf

from effdet_jax.models import official_checkpoint
from effdet_jax.models.variables import abstract_variables
from effdet_jax.training import checkpoint, optim

ACCEPTED_PATHS = ('an official TF checkpoint (a directory, a prefix with its .index file, or a '
                  'released .tar.gz / .tgz), a directory from effdet_jax.tools.convert, an export '
                  'bundle, or a training workdir or one of its checkpoints/<step> directories')
KINDS = ('training', 'variables', 'official')


@dataclasses.dataclass
class Weights:
  """Model variables (`{'params', 'batch_stats'}`) and where they came from."""
  raw: Any
  ema: Optional[Any]        # a training checkpoint's EMA weights; None where there is one set
  step: int                 # the training step (0 where the path does not say)
  kind: str                 # one of KINDS
  path: str
  workdir: Optional[str]    # the training workdir, for kind 'training'

  @property
  def variables(self):
    """The weights to predict with or start from: the EMA ones where there are two sets."""
    return self.raw if self.ema is None else self.ema


def require_existing(path: str, what: str = 'checkpoint') -> None:
  """A weights path that is not there, named with the kinds of path accepted."""
  if not (tf.io.gfile.exists(path) or tf.io.gfile.exists(path + '.index')):
    raise FileNotFoundError(f'{what} {path} does not exist; expected {ACCEPTED_PATHS}')


def training_checkpoint(path: str) -> Tuple[Optional[str], Optional[int]]:
  """(workdir, step or None) if `path` is a training workdir or one of its
  `checkpoints/<step>` directories, else (None, None)."""
  path = path.rstrip('/')
  if os.path.basename(os.path.dirname(path)) == 'checkpoints' and os.path.basename(path).isdigit():
    return os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
  if tf.io.gfile.isdir(os.path.join(path, 'checkpoints')):
    return path, None
  return None, None


def kind_of(path: str) -> str:
  """Which of KINDS `path` is read as (the order in the module docstring)."""
  if training_checkpoint(path)[0] is not None:
    return 'training'
  if checkpoint.is_variables_dir(path):
    return 'variables'
  return 'official'


def load_weights(path: str, config: ml_collections.ConfigDict, *, what: str = 'checkpoint',
                 use_ema: Optional[bool] = None, backbone_only: bool = False,
                 reinit_class_head: bool = False, rng: Optional[jax.Array] = None) -> Weights:
  """The weights `path` holds, checked against `config`'s model.

  `what` names the path in errors (e.g. the flag it came from). The other
  arguments are for official checkpoints only (`load_official_checkpoint`'s):
  `backbone_only` (an EfficientNet ImageNet checkpoint), `reinit_class_head`
  (fine-tuning to another number of classes), `use_ema`, `rng`.
  """
  require_existing(path, what)
  kind = kind_of(path)
  if kind != 'official' and backbone_only:
    raise ValueError(f'{what} {path}: backbone-only loading needs an official EfficientNet '
                     f'checkpoint, not a {kind} directory')
  if kind == 'training':
    workdir, step = training_checkpoint(path)
    return load_workdir(workdir, config, step)
  if kind == 'variables':
    return Weights(checkpoint.restore_variables(path, config), None, 0, kind, path, None)
  raw = official_checkpoint.load_official_checkpoint(
      path, config, use_ema=use_ema, backbone_only=backbone_only,
      reinit_class_head=reinit_class_head, rng=rng)
  return Weights(raw, None, 0, kind, path, None)


def load_workdir(workdir: str, config: ml_collections.ConfigDict,
                 step: Optional[int] = None) -> Weights:
  """The raw and EMA weights of a training checkpoint of `workdir` (the latest
  unless `step`), on this process's first device, checked against `config`'s
  model."""
  ckpts = checkpoint.TrainCheckpoints(workdir, keep=1 << 30)
  try:
    step = ckpts.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no training checkpoint in {ckpts.directory}; train first, or pass '
                              f'--checkpoint (a converted or an official checkpoint)')
    if step not in ckpts.manager.all_steps():
      raise FileNotFoundError(f'{ckpts.directory} has no checkpoint of step {step} (it has '
                              f'{sorted(ckpts.manager.all_steps())})')
    state = ckpts.restore_on_one_device(step)
  finally:
    ckpts.close()
  layout = optim.ParamLayout(abstract_variables(config))
  for key, size in (('params', layout.num_params), ('batch_stats', layout.num_stats),
                    ('ema_params', layout.num_params), ('ema_batch_stats', layout.num_stats)):
    if state[key].shape != (size,):
      raise ValueError(f'{ckpts.directory}/{step}: {key} has {state[key].shape[0]} values, '
                       f'{config.model.name} as configured needs {size}')
  raw = layout.variables(*jax.device_get((state['params'], state['batch_stats'])))
  ema = layout.variables(*jax.device_get((state['ema_params'], state['ema_batch_stats'])))
  path = os.path.join(ckpts.directory, str(step))
  return Weights(raw, ema, step, 'training', path, workdir)
