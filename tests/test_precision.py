"""Precision names, and float64 runs: the switch, and what it keeps in float64."""
import subprocess
import sys

import pytest

from effdet_jax.runtime import precision
from processes import ROOT, env


def test_names_and_dtypes():
  assert str(precision.compute_dtype('bfloat16')) == 'bfloat16'
  assert str(precision.param_dtype('bfloat16')) == 'float32'
  assert str(precision.compute_dtype('float16')) == 'float16'
  assert str(precision.param_dtype('float16')) == 'float32'
  assert precision.scales_loss('float16') and not precision.scales_loss('bfloat16')
  with pytest.raises(ValueError, match='must be one of'):
    precision.compute_dtype('half')


SCRIPT = '''
import sys, jax, numpy as np
sys.path.insert(0, 'tests')
import tiny_train_config
from effdet_jax.data import input_pipeline
from effdet_jax.models.variables import abstract_variables
from effdet_jax.runtime import precision
from effdet_jax.training import optim
config = tiny_train_config.get_config(sys.argv[1])
config.train.precision = 'float64'
try:
  abstract_variables(config)
  raise SystemExit('float64 without 64-bit mode was accepted')
except ValueError as e:
  assert 'precision.configure' in str(e), e
precision.configure(config)
assert config.model.dtype == 'float64' and jax.config.jax_enable_x64
abstract = abstract_variables(config)
assert {str(x.dtype) for x in jax.tree.leaves(abstract)} == {'float64'}
assert optim.ParamLayout(abstract).dtype == np.float64
batch = next(input_pipeline.train_data(config, process_index=0, process_count=1)
             .dataset.as_numpy_iterator())
assert batch['image'].dtype == np.float64, batch['image'].dtype
print('ok')
'''


def test_float64_is_switched_on_by_the_config_and_reaches_the_batch(tmp_path):
  import tiny_train_config  # pylint: disable=g-import-not-at-top
  tiny_train_config.write_data(str(tmp_path))
  out = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path)], cwd=ROOT, env=env(1),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and 'ok' in out.stdout, out.stderr[-3000:]
