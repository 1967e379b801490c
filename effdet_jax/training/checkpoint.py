"""Checkpoints on disk, with orbax: model variables (converted or exported) with
their config beside them, and the training states of a workdir. What a path
holds and how to read it whatever it is: `weights.py`."""
import json
import os
from typing import Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

from effdet_jax.models.variables import abstract_variables

VARIABLES_DIR = 'variables'
CONFIG_FILE = 'config.json'


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
  directory = os.path.abspath(directory)
  target = os.path.join(directory, VARIABLES_DIR)
  if not os.path.isdir(target):
    raise FileNotFoundError(f'{directory!r} has no {VARIABLES_DIR}/: not written by '
                            f'effdet_jax.tools.convert (save_variables)')
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


def abstract_like(tree, sharding):
  """Shape/dtype stand-ins of `tree`'s leaves, placed with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
