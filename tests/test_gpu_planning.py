"""The train step compiled for GPUs that are not there (XLA's CUDA compiler told
what an H200 is), on the tiny test model. The compile runs where the
`gpu-plan` extra is installed; CI does not install it (see setup.py)."""
import json
import os
import subprocess
import sys

import pytest

import tiny_train_config
from effdet_jax.models.variables import abstract_variables
from effdet_jax.tools import accelerators
from effdet_jax.training import optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HAVE_COMPILER = accelerators.gpu_compiler_available()


@pytest.mark.slow   # the compile takes ~70 s
@pytest.mark.skipif(not HAVE_COMPILER,
                    reason="XLA's CUDA compiler not importable: pip install -e '.[gpu-plan]'")
@pytest.mark.parametrize('precision', ['bfloat16', 'float16'])
def test_train_step_for_two_h200s_from_the_command_line(tmp_path, precision):
  """Memory, FLOPs and the gradient all-reduce; no time estimate. The
  convolutions are cuDNN's, all in the run's precision, and the anchor matcher
  is the matrix one (no loop)."""
  hlo = str(tmp_path / 'train.hlo')
  result = subprocess.run(
      [sys.executable, '-m', 'effdet_jax.tools.memory',
       '--config', os.path.join(ROOT, 'tests', 'tiny_train_config.py'),
       '--target', 'gpu:h200:2', '--global_batch_size', '8', '--precision', precision,
       '--hlo', hlo, '--json'], capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['devices'] == 2 and report['chip'] == 'NVIDIA H200 SXM'
  assert report['conv_impl'] == 'native' and report['images_per_device'] == 4
  assert report['usable_bytes_per_device'] == int(0.75 * report['hbm_bytes_per_device'])
  assert report['fits'] and 0 < report['peak_bytes_per_device'] < 2**30
  assert report['estimated_step_s'] is None and report['xla_optimal_seconds'] is None
  # The TPU program's count for the same step is 21-26 MFLOP per image.
  assert 15e6 < report['flops_per_image'] < 35e6, report['flops_per_image']
  params = optim.ParamLayout(abstract_variables(tiny_train_config.get_config())).num_params
  assert report['all_reduce_bytes_per_device'] >= 2 * params
  text = open(hlo).read()
  convolutions = [line for line in text.splitlines() if 'custom_call_target="__cudnn$conv' in line]
  assert len(convolutions) > 100 and ' while(' not in text
  dtype = {'bfloat16': 'bf16', 'float16': 'f16'}[precision]
  assert all(f'= ({dtype}[' in line for line in convolutions), convolutions[0]
  assert 'no time estimate' in result.stdout


def test_bad_gpu_targets_get_one_line():
  with pytest.raises(ValueError, match=r'expected gpu:<model>\[:<count>\]'):
    accelerators.parse('gpu:b200')
  with pytest.raises(ValueError, match=r'expected gpu:<model>\[:<count>\]'):
    accelerators.parse('gpu:h200:x')


@pytest.mark.skipif(HAVE_COMPILER, reason="XLA's CUDA compiler is installed here")
def test_without_the_cuda_compiler_the_target_says_what_to_install():
  with pytest.raises(ValueError, match=r"XLA cannot compile for this GPU here .*\[gpu-plan\]"):
    accelerators.parse('gpu:h200')
