"""The benchmark tool on the tiny model: every mode runs and reports what it measured."""
import json
import os
import subprocess
import sys

import pytest

from processes import ROOT, env
import tiny_train_config

CONFIG = os.path.join(ROOT, 'tests', 'tiny_train_config.py')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('tiny_data'))
  tiny_train_config.write_data(root)
  return root


def _benchmark(data_root, *flags, check=True):
  out = subprocess.run([sys.executable, '-m', 'effdet_jax.tools.benchmark', '--config',
                        f'{CONFIG}:{data_root}', '--json', *flags],
                       cwd=ROOT, env=env(1), capture_output=True, text=True, timeout=600)
  if not check:
    return out
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def _check_common(result, mode, batch_size):
  assert result['mode'] == mode
  assert result['batch_size'] == batch_size
  assert result['peak_host_memory_mib'] > 0
  assert result['compile_s'] > 0
  assert isinstance(result['huge_pages'], bool)


def test_compile_mode_times_each_phase_of_a_cold_compile(data_root):
  result = _benchmark(data_root, '--mode', 'compile', '--batch_size', '2', '--repeats', '2')
  _check_common(result, 'compile', 2)
  assert result['images_per_sec'] is None
  assert result['repeats'] == 2
  phases = result['trace_s'] + result['lower_s'] + result['xla_compile_s']
  for name in ('trace_s', 'lower_s', 'xla_compile_s'):
    assert result[name] > 0, name
  # Medians of the phases need not add up to the median total, but they are close.
  assert abs(phases - result['compile_s']) < 0.25 * result['compile_s'] + 0.05
  # Repeats compile from nothing: the second is no cache hit.
  assert result['compile_s_min'] > 0.5 * result['compile_s']


def test_train_mode_reports_images_per_second(data_root):
  result = _benchmark(data_root, '--mode', 'train', '--batch_size', '2', '--repeats', '2',
                      '--warmup', '1')
  _check_common(result, 'train', 2)
  assert result['images_per_sec'] > 0
  assert result['step_ms_min'] <= result['step_ms_median']
  assert result['first_call_s'] > 0      # timed apart from the median
  assert result['images_per_sec'] == pytest.approx(2e3 / result['step_ms_median'], rel=1e-2)
  assert result['image_size'] == [64, 64]
  assert result['device'] == 'cpu'
  assert result['peak_device_memory_mib'] is None   # the CPU allocator keeps no peak


def test_infer_mode_reports_images_per_second(data_root):
  result = _benchmark(data_root, '--mode', 'infer', '--batch_size', '2', '--repeats', '2')
  _check_common(result, 'infer', 2)
  assert result['images_per_sec'] > 0 and result['first_call_s'] > 0
  assert result['chunk_size'] >= 1


def test_input_mode_reads_the_configured_dataset(data_root, tmp_path):
  """`source='synthetic'` is resolved as training resolves it: written where the config
  says, then read as COCO-JSON."""
  root = str(tmp_path / 'synthetic')
  result = _benchmark(data_root, '--mode', 'input', '--batch_size', '4', '--repeats', '3',
                      '--config.data.source=synthetic', f'--config.data.synthetic.root={root}',
                      '--config.data.synthetic.num_train=8', '--config.data.synthetic.num_val=2',
                      '--config.data.synthetic.image_size=64')
  _check_common(result, 'input', 4)
  assert result['source'] == 'coco_json'
  assert len(os.listdir(os.path.join(root, 'train'))) == 8
  assert result['images_per_sec'] > 0
  assert result['boxes_per_image'] > 0
  assert result['targets_ms_per_batch'] > 0


def test_ops_mode_times_each_distinct_convolution(data_root):
  result = _benchmark(data_root, '--mode', 'ops', '--batch_size', '2', '--repeats', '1',
                      '--warmup', '0', '--config.model.conv_impl=native')
  _check_common(result, 'ops', 2)
  assert result['images_per_sec'] is None and result['conv_impl'] == 'native'
  ops = result['ops']
  assert all(row['primitive'] == 'conv_general_dilated' for row in ops)
  assert any('groups' in row['op'] for row in ops)            # the depthwise ones
  assert len({row['op'] for row in ops}) == len(ops)
  assert all(row['forward_ms'] > 0 and row['backward_ms'] > 0 for row in ops)
  costs = [row['count'] * (row['forward_ms'] + row['backward_ms']) for row in ops]
  assert costs == sorted(costs, reverse=True)
  assert result['forward_ms_total'] == pytest.approx(
      sum(row['count'] * row['forward_ms'] for row in ops), abs=1e-2)


def test_unknown_mode_is_a_usage_error(data_root):
  out = _benchmark(data_root, '--mode', 'fastest', check=False)
  assert out.returncode != 0
  assert "--mode must be one of ('infer', 'postprocess', 'input', 'train', 'compile'" in out.stderr
