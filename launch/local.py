"""Several processes of `effdet_jax.main` on this machine, as the hosts of one run.

    python launch/local.py --num_processes 2 --devices_per_process 2 -- \
        --config effdet_jax/configs/shapes.py --workdir runs/two_hosts [--config.x=y ...]

Every process gets its own `devices_per_process` CPU devices
(`--xla_force_host_platform_device_count`), the coordinator address of process
0 on a free local port and gloo CPU collectives: the multi-host code paths
(per-host data shards, cross-host gradients and BatchNorm statistics,
checkpoints written by all processes) run on a laptop. Logs go to
`<workdir>/logs/process_<i>.log`. If one process fails the others are
stopped; Ctrl-C or SIGTERM is passed to all (training checkpoints and exits).
`--dry_run` prints the commands.
"""
import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from effdet_jax.runtime import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def workdir_of(main_flags):
  for i, flag in enumerate(main_flags):
    if flag.startswith('--workdir='):
      return flag.split('=', 1)[1]
    if flag == '--workdir' and i + 1 < len(main_flags):
      return main_flags[i + 1]
  cli.fail('give the flags of effdet_jax.main after "--", including --workdir')


def commands(num_processes: int, port: int, main_flags):
  """(argv, process_id) of every process."""
  return [([sys.executable, '-m', 'effdet_jax.main', *main_flags,
            f'--coordinator_address=localhost:{port}', f'--num_processes={num_processes}',
            f'--process_id={i}', '--cpu_collectives=gloo'], i) for i in range(num_processes)]


def environment(devices_per_process: int):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  return env


def run(num_processes: int, devices_per_process: int, main_flags, dry_run: bool = False) -> int:
  workdir = workdir_of(main_flags)
  port = free_port()
  cmds = commands(num_processes, port, main_flags)
  log_dir = os.path.join(workdir, 'logs')
  prefix = (f'JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count='
            f'{devices_per_process}')
  if dry_run:
    for argv, i in cmds:
      print(f'{prefix} {shlex.join(argv)} > {os.path.join(log_dir, f"process_{i}.log")} 2>&1 &')
    return 0
  os.makedirs(log_dir, exist_ok=True)
  env = environment(devices_per_process)
  procs = []
  for argv, i in cmds:
    log = open(os.path.join(log_dir, f'process_{i}.log'), 'w')
    procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  print(f'{num_processes} processes x {devices_per_process} devices; logs in {log_dir}/', flush=True)

  def forward(signum, _):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  signal.signal(signal.SIGINT, forward)
  signal.signal(signal.SIGTERM, forward)
  failed = None
  while any(p.poll() is None for p in procs):
    for i, p in enumerate(procs):
      if p.poll() not in (None, 0) and failed is None:
        failed = i
        print(f'process {i} exited with {p.returncode}; stopping the others '
              f'(see {log_dir}/process_{i}.log)', file=sys.stderr, flush=True)
        for other in procs:
          if other.poll() is None:
            other.terminate()
    time.sleep(0.5)
  codes = [p.returncode for p in procs]
  if failed is None and any(codes):
    failed = next(i for i, c in enumerate(codes) if c)
  if failed is not None:
    with open(os.path.join(log_dir, f'process_{failed}.log')) as f:
      sys.stderr.write(''.join(f.readlines()[-20:]))
    return codes[failed] or 1
  return 0


def main():
  parser = cli.ArgumentParser(description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('--dry_run', action='store_true', help='print the commands only')
  own, main_flags = (sys.argv[1:], []) if '--' not in sys.argv else (
      sys.argv[1:sys.argv.index('--')], sys.argv[sys.argv.index('--') + 1:])
  args = parser.parse_args(own)
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error('--num_processes and --devices_per_process must be >= 1')
  sys.exit(run(args.num_processes, args.devices_per_process, main_flags, args.dry_run))


if __name__ == '__main__':
  main()
