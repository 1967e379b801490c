"""Launchers (TPU pod and SLURM dry runs, local multi-process) and sweeps."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import tiny_train_config
from effdet_jax.main import cluster_from_environment
from effdet_jax.tools import sweep as sweep_lib
from effdet_jax.training.metrics_writer import read_metrics
from processes import ROOT, env

TINY = os.path.join(ROOT, 'tests', 'tiny_train_config.py')


def _launch(script, *args, check=True):
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', script), *args], cwd=ROOT,
                       env=env(1), capture_output=True, text=True, timeout=600)
  if check:
    assert out.returncode == 0, out.stderr[-3000:]
  return out


def _commands(stdout):
  return [line[2:] for line in stdout.splitlines() if line.startswith('$ ')]


def test_tpu_pod_dry_run_for_two_workers():
  where = ['--name', 'pod', '--zone', 'us-central2-b', '--project', 'proj']
  out = _launch('tpu_pod.py', 'up', *where, '--accelerator_type', 'v4-16', '--spot', '--bucket',
                'gs://bkt', '--run', 'r1', '--dry_run', '--', '--config.train.learning_rate=0.1')
  describe, create, pack, scp, install, train = _commands(out.stdout)
  assert describe.startswith('gcloud compute tpus tpu-vm describe pod --zone=us-central2-b '
                             '--project=proj')
  assert create == ('gcloud compute tpus tpu-vm create pod --zone=us-central2-b --project=proj '
                    '--accelerator-type=v4-16 --version=tpu-ubuntu2204-base --spot')
  assert 'git ls-files' in pack and 'tar' in pack
  assert scp.startswith('gcloud compute tpus tpu-vm scp /tmp/effdet_jax_checkout.tar.gz') and \
      scp.endswith('--worker=all')
  assert '--worker=all' in install and 'pip install -q -e' in install and '[tpu]"' in install
  assert '"jax[tpu]"' not in install and ' -U ' not in install   # pinned by the tpu extra
  assert 'tpu-vm ssh pod' in train and '--worker=all' in train
  for part in ('python3 -m effdet_jax.main', '--config=effdet_jax/configs/efficientdet.py:d0',
               '--workdir=gs://bkt/runs/r1', '--mode=train_and_eval',
               '--config.train.learning_rate=0.1', 'nohup', '~/effdet_logs/r1.log'):
    assert part in train, part
  assert '--coordinator_address' not in train   # workers find each other on a slice
  assert out.stdout.splitlines()[-1].startswith('dry run: nothing started; workdir gs://bkt/runs/r1')

  stop, = _commands(_launch('tpu_pod.py', 'stop', *where, '--dry_run').stdout)
  assert '--worker=all' in stop and 'pkill -TERM' in stop and 'effdet_jax.main' in stop
  logs, = _commands(_launch('tpu_pod.py', 'logs', *where, '--run', 'r1', '--worker', '1',
                            '--dry_run').stdout)
  assert '--worker=1' in logs and 'tail -n 20 ~/effdet_logs/r1.log' in logs
  resume = _commands(_launch('tpu_pod.py', 'resume', *where, '--bucket', 'gs://bkt', '--run',
                             'r1', '--dry_run').stdout)
  assert [c.split()[4] for c in resume[:3]] == ['describe', 'delete', 'create']
  assert '--workdir=gs://bkt/runs/r1' in resume[-1]      # the same workdir: training resumes
  delete, = _commands(_launch('tpu_pod.py', 'delete', *where, '--dry_run').stdout)
  assert delete.endswith('--quiet')
  local = _launch('tpu_pod.py', 'train', *where, '--bucket', '/tmp/x', '--dry_run', check=False)
  assert local.returncode == 1 and local.stderr.startswith('error: the workdir must be on gs://')


def test_slurm_dry_run_for_two_nodes():
  out = _launch('slurm.py', '--nodes', '2', '--gpus_per_node', '8', '--workdir', '/shared/d0',
                '--partition', 'gpu', '--dry_run', '--', '--config.train.num_epochs=1')
  script = out.stdout
  for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=1', '#SBATCH --gpus-per-node=8',
               '#SBATCH --signal=TERM@120', '#SBATCH --requeue', '#SBATCH --partition=gpu',
               '$ sbatch /shared/d0/logs/effdet_jax.sbatch'):
    assert line in script.splitlines(), line
  srun, = [line for line in script.splitlines() if line.startswith('srun ')]
  for part in ('python -m effdet_jax.main', '--workdir=/shared/d0', '--config.train.num_epochs=1',
               '--output=/shared/d0/logs/slurm-%j-%N.log'):
    assert part in srun, part
  assert '--coordinator_address' not in srun


def test_cluster_is_found_from_the_environment(monkeypatch):
  for name in ('TPU_WORKER_HOSTNAMES', 'SLURM_NTASKS', 'SLURM_STEP_NODELIST'):
    monkeypatch.delenv(name, raising=False)
  assert cluster_from_environment() == ''
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'w0')
  assert cluster_from_environment() == ''              # one worker
  monkeypatch.setenv('TPU_WORKER_HOSTNAMES', 'w0,w1')
  assert cluster_from_environment() == 'tpu_pod'
  monkeypatch.delenv('TPU_WORKER_HOSTNAMES')
  monkeypatch.setenv('SLURM_NTASKS', '2')
  assert cluster_from_environment() == ''              # sbatch's shell, not an srun task
  monkeypatch.setenv('SLURM_STEP_NODELIST', 'node[01-02]')
  assert cluster_from_environment() == 'slurm'
  monkeypatch.setenv('SLURM_NTASKS', '1')
  assert cluster_from_environment() == ''


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('launch_data'))
  tiny_train_config.write_data(root)
  return root


@pytest.fixture(scope='module')
def cached_env(tmp_path_factory):
  """A subprocess environment with a persistent compile cache, so runs of the
  same program (sweep points that change only the input pipeline) compile once."""
  return dict(env(1), JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp('jax_cache')))


def test_local_launcher_stops_when_a_process_fails(tmp_path):
  out = _launch('local.py', '--num_processes', '2', '--', '--config', f'{TINY}:/nowhere',
                '--workdir', str(tmp_path), '--config.train.no_such_field=1', check=False)
  assert out.returncode != 0 and 'no_such_field' in out.stderr
  assert sorted(os.listdir(tmp_path / 'logs')) == ['process_0.log', 'process_1.log']


@pytest.mark.slow
def test_local_launcher_trains_with_two_processes(data_root, tmp_path):
  workdir = tmp_path / 'run'
  _launch('local.py', '--num_processes', '2', '--devices_per_process', '2', '--', '--config',
          f'{TINY}:{data_root}', '--workdir', str(workdir), '--config.train.num_steps=6')
  assert os.path.isdir(workdir / 'checkpoints' / '6')
  assert [r['step'] for r in read_metrics(str(workdir)) if 'loss' in r] == [5, 6]
  second = (workdir / 'logs' / 'process_1.log').read_text()
  assert 'process 1 of 2, 2 local / 4 global devices' in second


SWEEP = textwrap.dedent('''\
    from effdet_jax.tools.sweep import Sweep, product, zipped

    def get_sweep():
      return Sweep(config='{config}', mode='{mode}',
                   points=[{{**a, **b}} for a in product({{'train.learning_rate': [0.01, 0.02]}})
                           for b in zipped({{'train.num_steps': [2, 3],
                                             'data.jitter_max': [1.0, 1.5]}})])
    ''')


def _sweep_file(directory, config, mode='train_and_eval', text=SWEEP):
  path = os.path.join(directory, 'tiny_sweep.py')
  with open(path, 'w') as f:
    f.write(text.format(config=config, mode=mode))
  return path


def test_sweep_expands_to_named_runs_with_their_overrides(tmp_path):
  sweep = sweep_lib.load_sweep(_sweep_file(str(tmp_path), f'{TINY}:/data'))
  assert sweep.name == 'tiny_sweep'
  runs = sweep_lib.expand(sweep, str(tmp_path / 'root'))
  assert [r.name for r in runs] == [
      '0_learning_rate=0.01_num_steps=2_jitter_max=1.0',
      '1_learning_rate=0.01_num_steps=3_jitter_max=1.5',
      '2_learning_rate=0.02_num_steps=2_jitter_max=1.0',
      '3_learning_rate=0.02_num_steps=3_jitter_max=1.5']
  assert runs[3].overrides == {'train.learning_rate': 0.02, 'train.num_steps': 3,
                               'data.jitter_max': 1.5}
  assert runs[3].workdir == str(tmp_path / 'root' / runs[3].name)
  assert runs[3].flags == [f'--config={TINY}:/data', f'--workdir={runs[3].workdir}',
                           '--mode=train_and_eval', '--config.train.learning_rate=0.02',
                           '--config.train.num_steps=3', '--config.data.jitter_max=1.5']
  # Keys ending alike keep their full names.
  names = sweep_lib.run_names([{'data.train.annotations': 'a.json', 'data.val.annotations': 'b',
                                'model.image_size': (256, 320)}])
  assert names == ['0_data.train.annotations=a.json_data.val.annotations=b_image_size=256-320']
  tpu = sweep_lib.launch_command(runs[0], 'tpu', '--name pod --zone z', sweep)
  assert tpu[2:5] == ['train', '--name', 'pod'] and f'--workdir={runs[0].workdir}' in tpu
  assert tpu[-3:] == ['--config.train.learning_rate=0.01', '--config.train.num_steps=2',
                      '--config.data.jitter_max=1.0']
  slurm = sweep_lib.launch_command(runs[0], 'slurm', '--nodes 2', sweep)
  assert slurm[2:4] == ['--nodes', '2'] and f'--workdir={runs[0].workdir}' in slurm


def test_bad_sweeps_are_named(tmp_path):
  bad_key = SWEEP.replace("'train.learning_rate'", "'train.learnig_rate'")
  with pytest.raises(ValueError, match="point 0: 'train.learnig_rate' is not a field"):
    sweep_lib.expand(sweep_lib.load_sweep(_sweep_file(str(tmp_path), TINY, text=bad_key)), 'r')
  bad_type = SWEEP.replace('[0.01, 0.02]', "['fast', 'slow']")
  with pytest.raises(ValueError, match="learning_rate='fast' does not fit"):
    sweep_lib.expand(sweep_lib.load_sweep(_sweep_file(str(tmp_path), TINY, text=bad_type)), 'r')
  with pytest.raises(ValueError, match='one length'):
    sweep_lib.zipped({'a': [1, 2], 'b': [1]})
  empty = tmp_path / 'empty.py'
  empty.write_text('x = 1\n')
  with pytest.raises(ValueError, match='defines get_sweep'):
    sweep_lib.load_sweep(str(empty))


SUMMARY_SWEEP = textwrap.dedent('''\
    from effdet_jax.tools.sweep import Sweep, product, zipped

    def get_sweep():
      # Input-pipeline settings only: the second run reuses the first's executables.
      return Sweep(config='{config}', mode='{mode}',
                   points=[{{**a, **b}} for a in product({{'train.num_steps': [2]}})
                           for b in zipped({{'data.jitter_max': [1.0, 1.5],
                                             'data.input_rand_hflip': [True, False]}})])
    ''')


@pytest.mark.slow
def test_sweep_runs_locally_and_summarizes_real_metrics(data_root, cached_env, tmp_path):
  path = _sweep_file(str(tmp_path), f'{TINY}:{data_root}', text=SUMMARY_SWEEP)
  root = tmp_path / 'root'
  out = subprocess.run([sys.executable, '-m', 'effdet_jax.tools.sweep', 'run', '--sweep', path,
                        '--root', str(root)], cwd=ROOT, env=cached_env, capture_output=True,
                       text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(os.listdir(root)) == ['0_num_steps=2_jitter_max=1.0_input_rand_hflip=True',
                                      '1_num_steps=2_jitter_max=1.5_input_rand_hflip=False']
  summary = subprocess.run([sys.executable, '-m', 'effdet_jax.tools.sweep', 'summary', '--root',
                            str(root), '--json'], cwd=ROOT, env=env(1), capture_output=True,
                           text=True, timeout=300, check=True)
  rows = [json.loads(line) for line in summary.stdout.splitlines()]
  assert [r['overrides']['data.jitter_max'] for r in rows] == [1.0, 1.5]
  for row in rows:
    records = read_metrics(str(root / row['name']))
    final_eval = [r for r in records if 'AP' in r][-1]
    assert row['step'] == 2 and row['AP'] == final_eval['AP'] == row['best_AP']
    assert row['loss'] == [r for r in records if 'loss' in r][-1]['loss']
  table = subprocess.run([sys.executable, '-m', 'effdet_jax.tools.sweep', 'summary', '--root',
                          str(root)], cwd=ROOT, env=env(1), capture_output=True, text=True,
                         timeout=300, check=True).stdout.splitlines()
  assert table[0].split()[:4] == ['run', 'train.num_steps', 'data.jitter_max',
                                  'data.input_rand_hflip'] and len(table) == 3
  # Runs started from `print` (no sweep_point.json) are found from the sweep itself.
  for run in rows:
    os.remove(root / run['name'] / sweep_lib.POINT_FILE)
  from_sweep = subprocess.run([sys.executable, '-m', 'effdet_jax.tools.sweep', 'summary', '--root',
                               str(root), '--sweep', path, '--json'], cwd=ROOT, env=env(1),
                              capture_output=True, text=True, timeout=300, check=True)
  assert [json.loads(line) for line in from_sweep.stdout.splitlines()] == rows
