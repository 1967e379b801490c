"""The train and eval steps compiled for TPU slices ahead of time (XLA's TPU
compiler from libtpu, no TPU), on the tiny test model."""
import collections
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import tiny_train_config
from effdet_jax.models.variables import abstract_variables
from effdet_jax.tools import accelerators, memory
from effdet_jax.training import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [
    pytest.mark.slow,   # each compile takes 10-40 s
    pytest.mark.skipif(
        not accelerators.libtpu_available(),
        reason="libtpu not importable: install the tpu extra (pip install -e '.[test,tpu]')")]


@pytest.fixture(scope='module')
def config():
  return tiny_train_config.get_config()


@pytest.fixture(scope='module')
def bf16_config():
  config = tiny_train_config.get_config()
  config.model.dtype = 'bfloat16'
  return config


@pytest.fixture(scope='module')
def v5e_train(bf16_config):
  target = accelerators.parse('tpu:v5e:2x2')
  config = memory.target_config(bf16_config, target)
  compiled = memory.compile_for(config, target, 16)
  return compiled, memory.report(compiled, config, target, 16, 'train', 0.0)


@pytest.fixture(scope='module')
def v5e_eval(bf16_config):
  return memory.target_report(bf16_config, accelerators.parse('tpu:v5e:2x2'), 16, 'eval')


def _sane(report, devices, hbm_gib):
  assert report['devices'] == devices and report['hbm_bytes_per_device'] == hbm_gib * 2**30
  assert report['fits'] and 0 < report['peak_bytes_per_device'] < 2**30
  assert report['estimated_step_s'] is not None and 0 < report['estimated_step_s'] < 0.1
  assert report['estimated_step_s'] >= report['flop_floor_s'] > 0
  assert report['estimated_images_per_sec_per_chip'] > 0


def test_train_and_eval_steps_compile_for_a_v5e_slice(v5e_train, v5e_eval):
  """Positive estimates, and the train step costs ~3x the forward (the eval step
  on the same chip: forward plus post-processing). Against model_stats's count
  for the host (4.9 MFLOP per image here) the TPU train step is 4.4x: the TPU
  program counts the forward 26% higher, and training-mode BatchNorm, the
  targets, loss and update add their own."""
  compiled, train = v5e_train
  _sane(train, 4, 16)
  _sane(v5e_eval, 4, 16)
  assert train['conv_impl'] == 'native' and train['mode'] == 'train'
  assert train['precision'] == 'bfloat16'
  ratio = train['flops_per_image'] / (3 * v5e_eval['flops_per_image'])
  assert 0.7 < ratio < 1.3, ratio
  # The state is replicated and donated: its buffers are the step's outputs.
  assert compiled.memory_analysis().alias_size_in_bytes > 0


def test_the_tpu_program_uses_the_matrix_anchor_matcher(v5e_train):
  """The CPU's matcher is a loop of dynamic length; the TPU program has none."""
  compiled, _ = v5e_train
  assert ' while(' not in compiled.as_text()


def test_gradients_are_all_reduced_once_per_step(v5e_train, config):
  """The batch is split over the devices and the state replicated: each step
  all-reduces one gradient per parameter and the BatchNorm moments. In a
  bfloat16 run the weight gradients are summed in bfloat16, where the official
  sums float32 (docs/tpu.md)."""
  compiled, train = v5e_train
  params = optim.ParamLayout(abstract_variables(config)).num_params
  elements = accelerators.all_reduce_elements(compiled.as_text())
  assert params <= elements['bf16'] < 1.1 * params and 0 < elements['f32'] < 0.1 * params
  assert train['all_reduce_bytes_per_device'] == 4 * elements['f32'] + 2 * elements['bf16']


def test_v3_slice_from_the_command_line(tmp_path):
  """8 TensorCores of 16 GiB; the command's last line is the JSON report."""
  result = subprocess.run(
      [sys.executable, '-m', 'effdet_jax.tools.memory',
       '--config', os.path.join(ROOT, 'tests', 'tiny_train_config.py'),
       '--target', 'tpu:v3:2x2', '--global_batch_size', '32', '--precision', 'bfloat16',
       '--breakdown', '4', '--json'], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  _sane(report, 8, 16)
  assert report['precision'] == 'bfloat16' and report['images_per_device'] == 4
  for key in ('model', 'target', 'devices', 'global_batch_size', 'precision', 'remat',
              'peak_bytes_per_device', 'hbm_bytes_per_device', 'fits', 'estimated_step_s',
              'flops_per_image', 'estimated_images_per_sec_per_chip'):
    assert key in report
  assert 'fits' in result.stdout and 'images/s per chip' in result.stdout
  # The model's most expensive parts, the largest share of XLA's estimate first.
  parts = report['cost_breakdown']
  fractions = [p['fraction'] for p in parts]
  assert len(parts) == 4 and fractions == sorted(fractions, reverse=True) and sum(fractions) < 1
  assert any(p['part'].startswith('backward EfficientDet/backbone/') for p in parts), parts
  assert "estimated cycles by model part" in result.stdout
  # libtpu's complaint that this machine is not a TPU VM is not shown.
  assert 'host bounds' not in result.stderr and 'TPU_ACCELERATOR_TYPE' not in result.stderr


def test_the_float16_train_step_compiles_with_float16_convolutions():
  """float16 with its loss scale: every convolution of the TPU program is
  float16, as every one is bfloat16 in a bfloat16 run."""
  f16 = tiny_train_config.get_config()
  f16.model.dtype = 'float16'
  target = accelerators.parse('tpu:v5e:2x2')
  f16 = memory.target_config(f16, target)
  compiled = memory.compile_for(f16, target, 16)
  report = memory.report(compiled, f16, target, 16, 'train', 0.0)
  _sane(report, 4, 16)
  assert report['precision'] == 'float16'
  convolutions = re.findall(r'= (\w+)\[[^\]]*\]\S* convolution\(', compiled.as_text())
  assert len(convolutions) > 100 and set(convolutions) == {'f16'}, collections.Counter(convolutions)


def test_a_multi_host_slice_partitions(config):
  """v5e 4x4: 16 chips on 4 hosts, one program for every device."""
  target = accelerators.parse('tpu:v5e:4x4')
  assert target.num_hosts == 4
  report = memory.target_report(config, target, 64)
  _sane(report, 16, 16)
  assert report['hosts'] == 4 and report['all_reduce_bytes_per_device'] > 0


def test_devices_are_what_libtpu_lists_per_generation():
  """v3 and v4: a device per TensorCore, two per chip with half its HBM each
  (libtpu builds no v4 megacore without a TPU); v5p: one megacore device per chip."""
  for spec, devices, per_chip, hbm in (('tpu:v3:2x2', 8, 2, 16), ('tpu:v4:2x2x1', 8, 2, 16),
                                       ('tpu:v5p:2x2x1', 4, 1, 95), ('tpu:v5e:2x2', 4, 1, 16)):
    target = accelerators.parse(spec)
    assert len(target.devices) == devices and target.chip.devices_per_chip == per_chip, spec
    assert target.chip.hbm_bytes_per_device == hbm * 2**30, spec


def test_bad_targets_get_one_line():
  with pytest.raises(ValueError, match='expected tpu:<generation>:<topology>'):
    accelerators.parse('tpu:v9:2x2')
  with pytest.raises(ValueError, match='XLA cannot describe'):
    accelerators.parse('tpu:v5e:3x7')


def test_the_cost_models_uncosted_ops_are_still_minus_one_second():
  """What `accelerators.estimated_seconds` undoes: a multiply by a concatenation
  of 64 broadcasts (one ConcatBitcast) costs -1 s in the pinned libtpu's
  `optimal_seconds`. If a new libtpu scores it, this fails and the correction goes."""
  target = accelerators.parse('tpu:v5e:2x2')
  mesh = jax.sharding.Mesh(np.array(target.devices), ('data',))
  replicated = NamedSharding(mesh, PartitionSpec())
  sizes = [1000 + 4000 * i for i in range(64)]
  grads = jax.ShapeDtypeStruct((sum(sizes),), jnp.float32, sharding=replicated)
  values = jax.ShapeDtypeStruct((64,), jnp.float32, sharding=replicated)
  compiled = jax.jit(lambda g, v: g * jnp.concatenate(
      [jnp.broadcast_to(v[i], (n,)) for i, n in enumerate(sizes)])).lower(grads, values).compile()
  (cost,) = accelerators.per_device(compiled.cost_analysis())
  hlo = compiled.as_text()
  assert accelerators.uncosted_ops(hlo) == 1
  assert -1.0 < cost['optimal_seconds'] < -0.999
  assert 0 < accelerators.estimated_seconds(cost, hlo) < 1e-3


def test_a_step_over_the_hbm_is_reported_as_not_fitting(config, monkeypatch):
  """XLA:TPU refuses such a program (D7x at 2 images per v3 core); the report
  says so with XLA's figure instead of failing."""
  message = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO '
             'temporaries (15.77G) exceeds available HBM (15.48G).')

  def refuse(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(message)

  monkeypatch.setattr(memory, 'lower_for', refuse)
  report = memory.target_report(config, accelerators.parse('tpu:v3:2x2'), 8)
  assert report['fits'] is False and report['estimated_step_s'] is None
  assert report['temp_bytes_per_device'] == int(15.77 * 2**30)
  assert 'exceeds available HBM' in report['xla_error']
