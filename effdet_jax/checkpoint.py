"""Checkpoints on disk, with orbax: model variables (converted or exported) with
their config beside them, and the training states of a workdir."""
import json
import os
from typing import Optional, Tuple

import jax
import ml_collections
import orbax.checkpoint as ocp
import tensorflow as tf

VARIABLES_DIR = 'variables'
CONFIG_FILE = 'config.json'
ACCEPTED_PATHS = ('an official TF checkpoint (a directory, a prefix with its .index file, or a '
                  'released .tar.gz / .tgz), a directory from effdet_jax.convert, an export '
                  'bundle, or a training workdir or one of its checkpoints/<step> directories')


def require_existing(path: str, what: str = 'checkpoint') -> None:
  """A weights path that is not there, named with the kinds of path accepted."""
  if not (tf.io.gfile.exists(path) or tf.io.gfile.exists(path + '.index')):
    raise FileNotFoundError(f'{what} {path} does not exist; expected {ACCEPTED_PATHS}')


def save_variables(directory: str, variables, config: ml_collections.ConfigDict) -> None:
  """Write `{'params', 'batch_stats'}` and the config that built them."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  target = os.path.join(directory, VARIABLES_DIR)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(target, variables, force=True)
  checkpointer.wait_until_finished()
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))


def is_variables_dir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, VARIABLES_DIR))


def restore_variables(directory: str, config: ml_collections.ConfigDict):
  """Read variables written by `save_variables`, checked against `config`'s model."""
  from effdet_jax.convert import abstract_variables  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(directory)
  target = os.path.join(directory, VARIABLES_DIR)
  if not os.path.isdir(target):
    raise FileNotFoundError(f'{directory!r} has no {VARIABLES_DIR}/: not written by '
                            f'effdet_jax.convert (save_variables)')
  # Onto this process's first device: every process of a multi-host run reads
  # the whole (replicated) variables for itself.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          abstract_variables(config))
  try:
    return ocp.StandardCheckpointer().restore(target, abstract)
  except (ValueError, KeyError) as e:
    saved = os.path.join(directory, CONFIG_FILE)
    model = json.load(open(saved)).get('model', {}).get('name') if os.path.exists(saved) else '?'
    raise ValueError(f'{target} (saved for {model}) does not fit {config.model.name}: {e}') from e


def load_variables(path: str, config: ml_collections.ConfigDict):
  """Variables from a converted checkpoint directory, an export bundle or any
  official TF checkpoint."""
  require_existing(path)
  if is_variables_dir(path):
    return restore_variables(path, config)
  from effdet_jax.convert import load_official_checkpoint  # pylint: disable=g-import-not-at-top
  return load_official_checkpoint(path, config)


class TrainCheckpoints:
  """The training states of a workdir (`DIR/checkpoints/<step>`), saved
  asynchronously, the last `keep` kept. A state is restored onto whatever mesh
  the abstract target names, so a checkpoint written on N devices restores on M.
  Only complete checkpoints are ever seen as the latest (orbax finalizes a step
  directory by an atomic rename)."""

  def __init__(self, workdir: str, keep: int):
    if '://' not in workdir:
      workdir = os.path.abspath(workdir)
    self.directory = os.path.join(workdir, 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, abstract_state, step: Optional[int] = None):
    step = self.latest_step() if step is None else step
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def restore_on_one_device(self, step: Optional[int] = None):
    """A saved state as a dict of arrays on this process's first device, whatever
    topology wrote it (for evaluation, export and inspection)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            self.manager.item_metadata(step))
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def training_checkpoint(path: str) -> Tuple[Optional[str], Optional[int]]:
  """(workdir, step or None) if `path` is a training workdir or one of its
  `checkpoints/<step>` directories, else (None, None)."""
  path = path.rstrip('/')
  if os.path.basename(os.path.dirname(path)) == 'checkpoints' and os.path.basename(path).isdigit():
    return os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
  if tf.io.gfile.isdir(os.path.join(path, 'checkpoints')):
    return path, None
  return None, None


def load_training_variables(workdir: str, config: ml_collections.ConfigDict,
                            step: Optional[int] = None):
  """(step, raw variables, EMA variables) of a training checkpoint of `workdir`
  (the latest unless `step`), on this process's first device, checked against
  `config`'s model."""
  from effdet_jax import convert, optim  # pylint: disable=g-import-not-at-top
  ckpts = TrainCheckpoints(workdir, keep=1 << 30)
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
  layout = optim.ParamLayout(convert.abstract_variables(config))
  for key, size in (('params', layout.num_params), ('batch_stats', layout.num_stats),
                    ('ema_params', layout.num_params), ('ema_batch_stats', layout.num_stats)):
    if state[key].shape != (size,):
      raise ValueError(f'{ckpts.directory}/{step}: {key} has {state[key].shape[0]} values, '
                       f'{config.model.name} as configured needs {size}')
  raw = layout.variables(*jax.device_get((state['params'], state['batch_stats'])))
  ema = layout.variables(*jax.device_get((state['ema_params'], state['ema_batch_stats'])))
  return step, raw, ema


def load_ema_variables(workdir: str, config: ml_collections.ConfigDict,
                       step: Optional[int] = None):
  """(step, variables): the EMA weights of a training checkpoint (see
  `load_training_variables`)."""
  step, _, ema = load_training_variables(workdir, config, step)
  return step, ema


def load_weight_sets(path: str, config: ml_collections.ConfigDict):
  """(step, raw variables, EMA variables or None, training workdir or None) from any
  checkpoint: a training workdir (its latest) or step directory has both sets; a
  converted directory, an export bundle or an official TF checkpoint is one set
  (step 0)."""
  require_existing(path)
  workdir, step = training_checkpoint(path)
  if workdir is None:
    return 0, load_variables(path, config), None, None
  return (*load_training_variables(workdir, config, step), workdir)


def load_inference_variables(path: str, config: ml_collections.ConfigDict):
  """(step, variables, training workdir or None) for inference from any checkpoint
  (see `load_weight_sets`): the EMA weights where there are two sets."""
  step, raw, ema, workdir = load_weight_sets(path, config)
  return step, raw if ema is None else ema, workdir


def abstract_like(tree, sharding):
  """Shape/dtype stand-ins of `tree`'s leaves, placed with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
