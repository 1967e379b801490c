"""Train on a Cloud TPU VM slice (one or many workers) with gcloud.

    python launch/tpu_pod.py ACTION --name NAME --zone ZONE [--accelerator_type v4-16] \
        [--bucket gs://BUCKET] [--run RUN] [--config effdet_jax/configs/efficientdet.py:d0] \
        [--dry_run] [-- --config.train.x=y ...]

Actions:
  create   create the TPU VM (`--spot` for preemptible capacity); an existing
           one of that name is used as it is.
  setup    copy this checkout (its tracked files, with local edits) to every
           worker and install it there with JAX for TPU.
  train    start `effdet_jax.main` on all workers at once, in the background;
           the workdir is `<bucket>/runs/<run>` (or `--workdir`); each worker logs to
           `~/effdet_logs/<run>.log`. On a slice every worker finds the others
           by itself (`jax.distributed.initialize()`).
  logs     the last lines of every worker's log (`--worker i` for one).
  stop     SIGTERM to the training processes: they write a checkpoint and exit.
  resume   after a preemption: recreate the TPU VM if it was preempted or is
           gone (then set it up again) and start `train` with the same
           workdir, which continues from its latest checkpoint.
  delete   delete the TPU VM.
  up       create + setup + train.

`--dry_run` prints every command instead of running it.
"""
import argparse
import os
import shlex
import subprocess
import sys

from effdet_jax.runtime import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTIONS = ('create', 'setup', 'train', 'logs', 'stop', 'resume', 'delete', 'up')
REMOTE_DIR = 'effdet_jax'
LOG_DIR = 'effdet_logs'
TARBALL = '/tmp/effdet_jax_checkout.tar.gz'


class Gcloud:
  """Builds the gcloud commands of one TPU VM and runs (or prints) them."""

  def __init__(self, args):
    self.args = args
    self.dry_run = args.dry_run

  def _base(self, verb):
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', verb]

  def _where(self):
    where = [f'--zone={self.args.zone}']
    if self.args.project:
      where.append(f'--project={self.args.project}')
    return where

  def create(self):
    cmd = [*self._base('create'), self.args.name, *self._where(),
           f'--accelerator-type={self.args.accelerator_type}', f'--version={self.args.version}']
    if self.args.spot:
      cmd.append('--spot')
    return cmd

  def describe(self):
    return [*self._base('describe'), self.args.name, *self._where(), '--format=value(state)']

  def delete(self):
    return [*self._base('delete'), self.args.name, *self._where(), '--quiet']

  def ssh(self, command, worker='all'):
    return [*self._base('ssh'), self.args.name, *self._where(), f'--worker={worker}',
            f'--command={command}']

  def scp(self, local, remote):
    return [*self._base('scp'), local, f'{self.args.name}:{remote}', *self._where(),
            '--worker=all']

  def run(self, cmd, check=True, capture=False):
    print('$ ' + shlex.join(cmd), flush=True)
    if self.dry_run:
      return ''
    out = subprocess.run(cmd, check=check, text=True,
                         stdout=subprocess.PIPE if capture else None)
    return out.stdout if capture else ''


def workdir(args):
  return args.workdir or f"{args.bucket.rstrip('/')}/runs/{args.run}"


def pack_checkout():
  """The tracked files of this checkout, as they are on disk."""
  return ['bash', '-c', f'cd {shlex.quote(ROOT)} && git ls-files -z | '
                        f'tar --null -czf {TARBALL} -T -']


def setup_commands(gc):
  install = (f'rm -rf ~/{REMOTE_DIR} && mkdir -p ~/{REMOTE_DIR} && '
             f'tar -xzf ~/{os.path.basename(TARBALL)} -C ~/{REMOTE_DIR} && '
             # The tpu extra pins jax and libtpu to the validated versions (setup.py).
             f'python3 -m pip install -q -e "$HOME/{REMOTE_DIR}[tpu]"')
  return [pack_checkout(), gc.scp(TARBALL, '~/'), gc.ssh(install)]


def train_command(args, gc):
  main = ['python3', '-m', 'effdet_jax.main', f'--config={args.config}',
          f'--workdir={workdir(args)}', f'--mode={args.mode}', *args.main_flags]
  log = f'~/{LOG_DIR}/{args.run}.log'
  remote = (f'mkdir -p ~/{LOG_DIR} && cd ~/{REMOTE_DIR} && '
            f'nohup {shlex.join(main)} > {log} 2>&1 < /dev/null &')
  return gc.ssh(remote)


def logs_command(args, gc):
  log = f'~/{LOG_DIR}/{args.run}.log'
  return gc.ssh(f'echo "== $(hostname) {log}"; tail -n {args.lines} {log}', worker=args.worker)


def stop_command(gc):
  return gc.ssh("pkill -TERM -f 'effdet_jax.main' || true")


def act(args) -> int:
  gc = Gcloud(args)
  if args.action in ('train', 'up', 'resume') and not workdir(args).startswith('gs://'):
    cli.fail(f'the workdir must be on gs:// (every worker writes to it): pass '
             f'--bucket gs://BUCKET or --workdir gs://...; got {workdir(args)!r}')
  if args.action in ('create', 'up'):
    state = gc.run(gc.describe(), check=False, capture=True).strip()
    if state:
      print(f'{args.name} exists ({state}); using it', flush=True)
    else:
      gc.run(gc.create())
  if args.action in ('setup', 'up'):
    for cmd in setup_commands(gc):
      gc.run(cmd)
  if args.action == 'resume':
    state = gc.run(gc.describe(), check=False, capture=True).strip()
    if args.dry_run:
      print('# dry run: showing the commands for a preempted TPU VM', flush=True)
      state = 'PREEMPTED'
    if state != 'READY':      # preempted (or otherwise broken): replace it; gone: create it
      if state:
        gc.run(gc.delete())
      gc.run(gc.create())
      for cmd in setup_commands(gc):
        gc.run(cmd)
  if args.action in ('train', 'up', 'resume'):
    gc.run(train_command(args, gc))
    done = 'dry run: nothing started' if args.dry_run else 'started'
    print(f'{done}; workdir {workdir(args)}; logs: python launch/tpu_pod.py logs '
          f'--name {args.name} --zone {args.zone} --run {args.run}', flush=True)
  if args.action == 'logs':
    gc.run(logs_command(args, gc))
  if args.action == 'stop':
    gc.run(stop_command(gc))
  if args.action == 'delete':
    gc.run(gc.delete())
  return 0


def parse(argv):
  parser = cli.ArgumentParser(description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split('\n', 1)[1])
  parser.add_argument('action', choices=ACTIONS)
  parser.add_argument('--name', required=True, help='TPU VM name')
  parser.add_argument('--zone', required=True, help='e.g. us-central2-b')
  parser.add_argument('--project', default='', help='GCP project (default: gcloud\'s)')
  parser.add_argument('--accelerator_type', default='v4-16', help='e.g. v4-16 (2 workers)')
  parser.add_argument('--version', default='tpu-ubuntu2204-base', help='TPU VM software version')
  parser.add_argument('--spot', action='store_true', help='preemptible (spot) capacity')
  parser.add_argument('--bucket', default='', help='gs://BUCKET: workdirs go to <bucket>/runs/<run>')
  parser.add_argument('--run', default='d0', help='run name (the workdir and log names)')
  parser.add_argument('--workdir', default='', help='gs:// workdir (default <bucket>/runs/<run>)')
  parser.add_argument('--config', default='effdet_jax/configs/efficientdet.py:d0')
  parser.add_argument('--mode', default='train_and_eval', choices=('train', 'eval', 'train_and_eval'))
  parser.add_argument('--worker', default='all', help='logs: "all" or a worker index')
  parser.add_argument('--lines', type=int, default=20, help='logs: lines per worker')
  parser.add_argument('--dry_run', action='store_true', help='print the commands only')
  own, main_flags = split_main_flags(argv)
  args = parser.parse_args(own)
  args.main_flags = main_flags
  return args


def split_main_flags(argv):
  """(this script's arguments, the flags after "--" for effdet_jax.main)."""
  if '--' in argv:
    i = argv.index('--')
    return argv[:i], argv[i + 1:]
  return argv, []


if __name__ == '__main__':
  sys.exit(act(parse(sys.argv[1:])))
