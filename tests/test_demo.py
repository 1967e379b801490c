"""The demo config end to end, shortened: data generated under the workdir, trained,
evaluated, the picture drawn and the summary printed."""
import os
import subprocess
import sys

import pytest

from effdet_jax.training.metrics_writer import read_metrics
from processes import ROOT, env


@pytest.mark.slow
def test_demo_config_runs_end_to_end(tmp_path):
  workdir = str(tmp_path / 'shapes')
  out = subprocess.run(
      [sys.executable, '-m', 'effdet_jax.main', '--config', os.path.join(ROOT, 'effdet_jax', 'configs', 'shapes.py'),
       '--workdir', workdir, '--mode', 'train_and_eval', '--config.train.num_steps=6',
       '--config.train.log_every_steps=3', '--config.data.synthetic.num_train=24',
       '--config.data.synthetic.num_val=6', '--config.eval.global_batch_size=4',
       '--config.train.global_batch_size=4'],
      cwd=ROOT, env=env(1), capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert os.path.exists(os.path.join(workdir, 'data', 'annotations', 'instances_val.json'))
  rows = read_metrics(workdir)
  assert [r['step'] for r in rows if 'loss' in r] == [3, 6]
  assert rows[-1]['step'] == 6 and rows[-1]['eval_images'] == 6 and 0 <= rows[-1]['AP'] <= 1
  picture = os.path.join(workdir, 'eval', 'samples_6.png')
  assert os.path.getsize(picture) > 0
  summary = out.stdout.strip().splitlines()
  assert summary[0].startswith('AP ') and f'AP {rows[-1]["AP"]:.3f}' in summary[0]
  assert summary[1] == f'checkpoint: {os.path.join(workdir, "checkpoints", "6")}'
  assert summary[2] == f'predictions on validation images: {picture}'
