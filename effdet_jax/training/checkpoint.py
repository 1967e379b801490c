"""Checkpoints on disk, with orbax: model variables (converted or exported) with
their config beside them, and the training states of a workdir. What a path
holds and how to read it whatever it is: `weights.py`."""
import json
import logging
import os
from typing import Dict, Optional

from flax import serialization, traverse_util
import jax
import ml_collections
import numpy as np
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

  def restore(self, abstract_state, step: Optional[int] = None, fresh: Optional[Dict] = None):
    """The state at `step` (the latest if None) as `abstract_state` places it.

    `fresh`: values for entries a checkpoint may lack, as `abstract_state`'s
    fields nest them (`step.bookkeeping`): a checkpoint written before an entry
    existed, or by a run of another precision (float16's loss scale), resumes
    with it fresh, and what the checkpoint has beyond `abstract_state` is left
    unread. Each is logged. Any other difference is an error, as orbax's."""
    step = self.latest_step() if step is None else step
    where = os.path.join(self.directory, str(step))
    saved = _flat(self.manager.item_metadata(step).tree)
    wanted = _flat(serialization.to_state_dict(abstract_state))
    defaults = _flat(fresh or {})
    missing = [p for p in wanted if p not in saved and wanted[p] is not traverse_util.empty_node]
    unknown = [p for p in missing if p not in defaults]
    if unknown:
      raise ValueError(f'{where} lacks {", ".join("/".join(p) for p in unknown)}: not a '
                       f'training state of this model')
    extra = [p for p in saved if p not in wanted and saved[p] is not traverse_util.empty_node]
    # What is read keeps the checkpoint's structure; entries this run does not
    # use are read onto a first device and dropped.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    read = {p: wanted[p] if p in wanted else
            (m if m is traverse_util.empty_node else
             jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device))
            for p, m in saved.items()}
    values = _flat(self.manager.restore(step, args=ocp.args.StandardRestore(
        traverse_util.unflatten_dict(read))))
    for paths, what in ((missing, 'start fresh'), (extra, 'not used by this run')):
      if paths:
        logging.warning('%s: %s %s', where, ', '.join(sorted('/'.join(p) for p in paths)), what)
    state = {p: values[p] if p in saved else
             (v if v is traverse_util.empty_node else _placed(defaults[p], v.sharding))
             for p, v in wanted.items()}
    return serialization.from_state_dict(abstract_state, traverse_util.unflatten_dict(state))

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


def _flat(tree) -> Dict:
  """Leaves by path, empty dicts kept (as `traverse_util.empty_node`)."""
  return traverse_util.flatten_dict(tree, keep_empty_nodes=True)


def _placed(value, sharding) -> jax.Array:
  """A host value (the same on every process) as a global array with `sharding`."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def abstract_like(tree, sharding):
  """Shape/dtype stand-ins of `tree`'s leaves, placed with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
