"""Train on GPU nodes under SLURM: write an sbatch script and submit it.

    python launch/slurm.py --nodes 2 --gpus_per_node 8 --workdir /shared/runs/d0 \
        [--config effdet_jax/configs/efficientdet.py:d0] [--partition P] [--time 72:00:00] \
        [--dry_run] [-- --config.train.x=y ...]

One task per node sees all of that node's GPUs. `effdet_jax.main` finds the
other nodes from SLURM's environment (`SLURM_NTASKS`, `SLURM_PROCID`,
`SLURM_STEP_NODELIST`: `jax.distributed.initialize()` reads them), so the
script passes no coordinator flags. SLURM sends SIGTERM two minutes before the
time limit or a preemption (`--signal`), training writes a checkpoint and
exits, and `--requeue` starts the job again on the same workdir, which resumes
from that checkpoint. Logs: `<workdir>/logs/slurm-<job>-<node>.log`. The
workdir must be on storage every node sees. `--dry_run` prints the script and
the sbatch command.

One machine with several GPUs needs no launcher: `python -m effdet_jax.main
--config ... --workdir ...` uses all its GPUs in one process.
"""
import argparse
import os
import shlex
import subprocess
import sys

from effdet_jax.runtime import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNAL_SECONDS = 120


def sbatch_script(args, main_flags) -> str:
  log_dir = os.path.join(args.workdir, 'logs')
  main = ['python', '-m', 'effdet_jax.main', f'--config={args.config}',
          f'--workdir={args.workdir}', f'--mode={args.mode}', *main_flags]
  lines = ['#!/bin/bash',
           f'#SBATCH --job-name={args.job_name}',
           f'#SBATCH --nodes={args.nodes}',
           '#SBATCH --ntasks-per-node=1',
           f'#SBATCH --gpus-per-node={args.gpus_per_node}',
           f'#SBATCH --cpus-per-task={args.cpus_per_task}',
           f'#SBATCH --time={args.time}',
           f'#SBATCH --output={log_dir}/slurm-%j.log',
           f'#SBATCH --signal=TERM@{SIGNAL_SECONDS}',
           '#SBATCH --requeue']
  if args.partition:
    lines.append(f'#SBATCH --partition={args.partition}')
  if args.account:
    lines.append(f'#SBATCH --account={args.account}')
  lines += ['set -euo pipefail',
            f'cd {shlex.quote(ROOT)}',
            f'mkdir -p {shlex.quote(log_dir)}',
            f'srun --kill-on-bad-exit=1 --output={log_dir}/slurm-%j-%N.log {shlex.join(main)}',
            '']
  return '\n'.join(lines)


def main():
  parser = cli.ArgumentParser(description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split('\n', 1)[1])
  parser.add_argument('--workdir', required=True, help='on storage shared by all nodes')
  parser.add_argument('--config', default='effdet_jax/configs/efficientdet.py:d0')
  parser.add_argument('--mode', default='train_and_eval', choices=('train', 'eval', 'train_and_eval'))
  parser.add_argument('--nodes', type=int, default=1)
  parser.add_argument('--gpus_per_node', type=int, default=8)
  parser.add_argument('--cpus_per_task', type=int, default=32, help='input pipeline threads')
  parser.add_argument('--time', default='72:00:00')
  parser.add_argument('--partition', default='')
  parser.add_argument('--account', default='')
  parser.add_argument('--job_name', default='effdet_jax')
  parser.add_argument('--dry_run', action='store_true', help='print the script and command only')
  argv = sys.argv[1:]
  own, main_flags = (argv[:argv.index('--')], argv[argv.index('--') + 1:]) if '--' in argv else (
      argv, [])
  args = parser.parse_args(own)
  if args.nodes < 1 or args.gpus_per_node < 1:
    parser.error('--nodes and --gpus_per_node must be >= 1')
  script = sbatch_script(args, main_flags)
  path = os.path.join(args.workdir, 'logs', f'{args.job_name}.sbatch')
  if args.dry_run:
    print(f'# {path}\n{script}$ sbatch {path}')
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(script)
  subprocess.run(['sbatch', path], check=True)


if __name__ == '__main__':
  main()
