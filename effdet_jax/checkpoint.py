"""Model variables on disk as orbax checkpoints, with the config beside them."""
import json
import os

import ml_collections
import orbax.checkpoint as ocp

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
  from effdet_jax.convert import abstract_variables  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(directory)
  target = os.path.join(directory, VARIABLES_DIR)
  if not os.path.isdir(target):
    raise FileNotFoundError(f'{directory!r} has no {VARIABLES_DIR}/: not written by '
                            f'effdet_jax.convert (save_variables)')
  abstract = abstract_variables(config)
  try:
    return ocp.StandardCheckpointer().restore(target, abstract)
  except (ValueError, KeyError) as e:
    saved = os.path.join(directory, CONFIG_FILE)
    model = json.load(open(saved)).get('model', {}).get('name') if os.path.exists(saved) else '?'
    raise ValueError(f'{target} (saved for {model}) does not fit {config.model.name}: {e}') from e


def load_variables(path: str, config: ml_collections.ConfigDict):
  """Variables from a converted checkpoint directory or any official TF checkpoint."""
  if is_variables_dir(path):
    return restore_variables(path, config)
  from effdet_jax.convert import load_official_checkpoint  # pylint: disable=g-import-not-at-top
  return load_official_checkpoint(path, config)
