"""Building the CPU kernels: cached per source and CPU, and a missing or failing
compiler falls back to XLA with the reason logged (the ops' numbers are checked
in test_layers.py and test_losses.py)."""
import logging

import pytest

from effdet_jax.runtime import cpu_kernels


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
  """`cpu_kernels.targets()` as on a new machine with its cache under tmp_path;
  afterwards this process's targets come from the usual cache again."""
  monkeypatch.setenv('EFFDET_JAX_CACHE_DIR', str(tmp_path))
  cpu_kernels._cpu_targets.cache_clear()
  yield tmp_path
  monkeypatch.undo()
  cpu_kernels._cpu_targets.cache_clear()


def test_builds_once_into_the_cache(fresh_build):
  names = cpu_kernels.targets()
  assert names is not None and set(names._fields) == {
      'depthwise_kernel_grad', 'depthwise_input_grad', 'focal_loss'}
  (library,) = fresh_build.glob('cpu_kernels-*.so')
  built_at = library.stat().st_mtime_ns
  cpu_kernels._cpu_targets.cache_clear()
  assert cpu_kernels.targets() == names
  assert library.stat().st_mtime_ns == built_at, 'rebuilt although cached'
  assert list(fresh_build.glob('*.so')) == [library], 'a partial build was left behind'


@pytest.mark.parametrize('compiler,reason', [('no-such-compiler-here', 'No C++ compiler'),
                                             ('false', 'Could not build')])
def test_without_a_working_compiler_xla_runs_the_ops(fresh_build, monkeypatch, caplog, compiler,
                                                     reason):
  monkeypatch.setenv('CXX', compiler)
  with caplog.at_level(logging.WARNING):
    assert cpu_kernels.targets() is None
  assert reason in caplog.text and 'XLA runs' in caplog.text
  assert not list(fresh_build.glob('*.so'))


def test_can_be_turned_off(fresh_build, monkeypatch):
  monkeypatch.setenv('EFFDET_JAX_CPU_KERNELS', '0')
  assert cpu_kernels.targets() is None
  assert not list(fresh_build.glob('*.so'))
