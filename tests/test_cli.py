"""Every command: a user's mistake ends it with one `error:` line naming the
problem and a non-zero exit, a bug with its traceback, and a normal run shows
no library start-up noise."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import require_parity
from effdet_jax.runtime import cli
from processes import ROOT, env

# Start-up lines of TF, XLA and libtpu that no command may print by default.
NOISE = ('oneDNN', 'absl::InitializeLog', 'TPU_', 'libtpu', 'jellyfish', 'InitGoogle',
         "backend 'tpu'", 'checkpoint_manager.py', 'Traceback')


def _run(args, environment=None, timeout=300):
  command = args if args[0].endswith('.py') else ['-m', *args]
  return subprocess.run([sys.executable, *command], cwd=ROOT, env=environment or env(1),
                        capture_output=True, text=True, timeout=timeout)


def _without_jax_platforms():
  """A user's environment: JAX chooses the platform (and, with the `tpu` extra
  installed, would probe for a TPU)."""
  environment = env(1)
  environment.pop('JAX_PLATFORMS')
  return environment


def _assert_one_error_line(out, *expected):
  lines = out.stderr.strip().splitlines()
  errors = [l for l in lines if l.startswith('error: ')]
  assert out.returncode != 0 and len(errors) == 1 and lines[-1] == errors[0], out.stderr[-3000:]
  for part in expected:
    assert part in errors[0], errors[0]
  assert not [l for l in lines if any(n in l for n in NOISE)], out.stderr[-3000:]


D0 = 'effdet_jax/configs/efficientdet.py:d0'
BAD_INPUTS = {
    'unknown config key': (['effdet_jax.main', '--config', D0, '--workdir', '/tmp/never',
                            '--config.train.learnin_rate=0.1'],
                           ['--config.train.learnin_rate: no such config key; the closest is '
                            '--config.train.learning_rate']),
    'unknown model size': (['effdet_jax.main', '--config', 'effdet_jax/configs/efficientdet.py:d9',
                            '--workdir', '/tmp/never'], ["unknown EfficientDet size 'd9'", 'lite0']),
    'bad config value': (['effdet_jax.main', '--config', D0, '--workdir', '/tmp/never',
                          '--config.train.learning_rate=fast'],
                         ["--config.train.learning_rate=fast: could not convert string to float"]),
    'missing config file': (['effdet_jax.main', '--config', 'effdet_jax/configs/absent.py:d0', '--workdir',
                             '/tmp/never'], ['effdet_jax/configs/absent.py does not exist']),
    'convert: missing checkpoint': (['effdet_jax.tools.convert', '--config', D0, '--checkpoint', '/absent',
                                     '--output', '/tmp/never'],
                                    ['checkpoint /absent does not exist', '.tar.gz']),
    'export: missing checkpoint': (['effdet_jax.export', '--config', 'effdet_jax/configs/efficientdet.py:lite0',
                                    '--checkpoint', '/absent/run', '--output', '/tmp/never'],
                                   ['/absent/run does not exist', 'export bundle']),
    'predict: missing checkpoint': (['effdet_jax.tools.predict', '--config', D0, '--checkpoint',
                                     '/absent/ckpt', 'photo.jpg'], ['/absent/ckpt does not exist']),
    'benchmark: unknown mode': (['effdet_jax.tools.benchmark', '--config', D0, '--mode', 'fast'],
                                ["--mode must be one of", "got 'fast'"]),
    'memory: unknown TPU': (['effdet_jax.tools.memory', '--config', D0, '--target', 'tpu:v9:2x2'],
                            ["--target='tpu:v9:2x2'", 'v5e']),
    'model_stats: unknown key': (['effdet_jax.tools.model_stats', '--config', D0,
                                  '--config.model.fpn_num_filter=3'],
                                 ['the closest is --config.model.fpn_num_filters']),
    'make_tfrecords: missing annotations': (['effdet_jax.tools.make_tfrecords', '--annotations',
                                             '/absent.json', '--images', '/tmp', '--output', '/tmp/never'],
                                            ['/absent.json does not exist']),
    'inspect_dataset: missing annotations': (['effdet_jax.tools.inspect_dataset', '--config', D0,
                                              '--config.data.source=coco_json',
                                              '--config.data.train.annotations=/absent.json',
                                              '--config.data.train.images=/tmp'],
                                             ['/absent.json does not exist']),
    'synthetic: bad value': (['effdet_jax.data.synthetic', '--output', '/tmp/never', '--num_train=many'],
                             ['--num_train=many']),
    'sweep: missing root': (['effdet_jax.tools.sweep', 'summary', '--root', '/absent/root'],
                            ['--root /absent/root does not exist']),
    'sweep: missing sweep file': (['effdet_jax.tools.sweep', 'expand', '--sweep', '/absent/sweep.py',
                                   '--root', '/tmp/never'], ['/absent/sweep.py']),
    'launch/local: no workdir': (['launch/local.py', '--', '--config', D0], ['--workdir']),
    'launch/slurm: no workdir': (['launch/slurm.py', '--nodes', '2', '--dry_run'],
                                 ['required: --workdir']),
    'launch/tpu_pod: local workdir': (['launch/tpu_pod.py', 'train', '--name', 'pod', '--zone', 'z',
                                       '--workdir', '/tmp/run', '--dry_run'],
                                      ['the workdir must be on gs://']),
}


@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_a_bad_input_is_one_error_line(case):
  args, expected = BAD_INPUTS[case]
  if args[0].startswith('launch/'):
    args = [os.path.join(ROOT, args[0]), *args[1:]]
  _assert_one_error_line(_run(args, _without_jax_platforms()), *expected)


def test_a_missing_init_checkpoint_names_the_flag_and_the_kinds_of_path(tmp_path):
  out = _run(['effdet_jax.main', '--config', 'effdet_jax/configs/shapes.py', '--workdir', str(tmp_path / 'run'),
              f'--config.data.synthetic.root={tmp_path / "data"}', '--config.data.synthetic.num_train=4',
              '--config.data.synthetic.num_val=2', '--config.train.init_checkpoint=/absent/x'],
             _without_jax_platforms())
  _assert_one_error_line(out, '--config.train.init_checkpoint: /absent/x does not exist; expected '
                         'an official TF checkpoint', 'training workdir')


def test_verbosity_shows_the_traceback():
  args, _ = BAD_INPUTS['export: missing checkpoint']
  verbose = _run([*args, '--verbosity=1'])
  assert verbose.returncode != 0 and 'Traceback' in verbose.stderr
  flags = _run([*BAD_INPUTS['unknown config key'][0], '--verbosity=1'])
  assert flags.returncode != 0 and 'Traceback' in flags.stderr


def test_a_normal_run_prints_no_start_up_noise():
  out = _run(['effdet_jax.tools.model_stats', '--config', 'effdet_jax/configs/efficientdet.py:lite0'],
             _without_jax_platforms())
  assert out.returncode == 0 and out.stderr == '', out.stderr[-3000:]
  assert out.stdout.startswith('efficientdet-lite0: 3,243,470 trainable')


def test_predict_skips_an_unreadable_image_names_it_and_fails_at_the_end(tmp_path):
  parity = require_parity()
  good, bad = tmp_path / 'photo.png', tmp_path / 'broken.jpg'
  Image.fromarray(np.load(os.path.join(parity, 'input.npy'))[1]).save(good)
  bad.write_bytes(b'not an image')
  output = tmp_path / 'detections.json'
  out = _run(['effdet_jax.tools.predict', '--config', D0, '--checkpoint',
              os.path.join(parity, 'ckpt'), '--output', str(output), str(bad), str(good)],
             _without_jax_platforms())
  _assert_one_error_line(out, '1 of 2 images could not be read', 'broken.jpg')
  broken, photo = json.loads(output.read_text())
  assert broken['image'] == str(bad) and 'broken.jpg' in broken['error']
  assert photo['image'] == str(good) and len(photo['detections']) == 100
  project_lines = re.compile(r'[IWE]\d{4} [\d:.]+ +\d+ (official_checkpoint|predict|weights)\.py:\d+\] ')
  assert all(project_lines.match(l) or l.startswith('error: ')
             for l in out.stderr.strip().splitlines()), out.stderr


def test_sweep_print_writes_nothing(tmp_path):
  root = tmp_path / 'root'
  out = _run(['effdet_jax.tools.sweep', 'print', '--sweep', 'effdet_jax/configs/sweeps/shapes_lr.py', '--root',
              str(root)])
  assert out.returncode == 0 and len(out.stdout.splitlines()) == 6, out.stderr[-2000:]
  assert not root.exists()


def test_the_flag_helpers():
  assert cli.startup.verbose(['prog', '--verbosity=1']) and cli.startup.verbose(['-v', '2'])
  assert not cli.startup.verbose(['prog', '--verbosity=0']) and not cli.startup.verbose(['prog'])
  assert cli.flag_error(ValueError('flag --mode=x: value should be one of <a|b>'), []) == \
      '--mode=x: value should be one of <a|b>'
