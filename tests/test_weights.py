"""The one weights loader: what each kind of path is read as, and which set it gives."""
import os

import jax
import numpy as np
import pytest

from effdet_jax.models.variables import init_variables
from effdet_jax.training import checkpoint, optim, weights
from effdet_jax.training.step import create_state
import tiny_train_config


@pytest.fixture(scope='module')
def paths(tmp_path_factory):
  """A training workdir with steps 3 and 5 (EMA unlike the raw weights) and a
  converted directory of other weights, for the tiny model."""
  root = tmp_path_factory.mktemp('weights')
  config = tiny_train_config.get_config(str(root / 'data'))
  variables = init_variables(config, jax.random.PRNGKey(0))
  layout = optim.ParamLayout(jax.eval_shape(lambda: variables))
  workdir = str(root / 'run')
  ckpts = checkpoint.TrainCheckpoints(workdir, keep=2)
  state = create_state(variables, layout, config)
  for step, scale in ((3, 0.5), (5, 0.25)):
    ckpts.save(step, state.replace(params=state.params * scale))
  ckpts.wait()
  ckpts.close()
  converted = str(root / 'converted')
  checkpoint.save_variables(converted, init_variables(config, jax.random.PRNGKey(1)), config)
  return config, variables, workdir, converted


def _kernel(variables):
  return np.asarray(variables['params']['class_net']['class-predict']['pointwise_kernel'])


def test_a_workdir_gives_its_latest_raw_and_ema_weights(paths):
  config, variables, workdir, _ = paths
  loaded = weights.load_weights(workdir, config)
  assert (loaded.kind, loaded.step, loaded.workdir) == ('training', 5, workdir)
  assert loaded.path == os.path.join(workdir, 'checkpoints', '5')
  np.testing.assert_allclose(_kernel(loaded.raw), _kernel(variables) * 0.25)
  np.testing.assert_allclose(_kernel(loaded.ema), _kernel(variables))    # the EMA was not updated
  assert loaded.variables is loaded.ema


def test_a_step_directory_gives_that_step(paths):
  config, variables, workdir, _ = paths
  loaded = weights.load_weights(os.path.join(workdir, 'checkpoints', '3'), config)
  assert (loaded.kind, loaded.step) == ('training', 3)
  np.testing.assert_allclose(_kernel(loaded.raw), _kernel(variables) * 0.5)


def test_a_converted_directory_is_one_set(paths):
  config, variables, _, converted = paths
  loaded = weights.load_weights(converted, config)
  assert (loaded.kind, loaded.step, loaded.ema, loaded.workdir) == ('variables', 0, None, None)
  assert loaded.variables is loaded.raw
  assert not np.allclose(_kernel(loaded.raw), _kernel(variables))


def test_anything_else_is_read_as_an_official_checkpoint(paths, tmp_path):
  config = paths[0]
  (tmp_path / 'notes.txt').write_text('not a checkpoint')
  assert weights.kind_of(str(tmp_path)) == 'official'
  with pytest.raises(FileNotFoundError, match='no TF checkpoint in'):
    weights.load_weights(str(tmp_path), config)


def test_refusals_name_the_path(paths):
  config, _, workdir, converted = paths
  with pytest.raises(FileNotFoundError, match=r'--flag: /absent/w does not exist; expected an '
                                              r'official TF checkpoint'):
    weights.load_weights('/absent/w', config, what='--flag:')
  with pytest.raises(ValueError, match='backbone-only loading needs an official EfficientNet'):
    weights.load_weights(converted, config, backbone_only=True)
  with pytest.raises(FileNotFoundError, match=r'has no checkpoint of step 4 \(it has \[3, 5\]\)'):
    weights.load_workdir(workdir, config, step=4)
