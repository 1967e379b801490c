"""Sweeps: a base config and a list of override points, one run per point.

A sweep file (`effdet_jax/configs/sweeps/*.py`) defines `get_sweep()`:

    from effdet_jax.tools.sweep import Sweep, product, zipped
    def get_sweep():
      return Sweep(config='effdet_jax/configs/shapes.py',
                   points=product({'train.learning_rate': [0.08, 0.16, 0.32],
                                   'train.num_steps': [1000, 2000]}))

    python -m effdet_jax.tools.sweep expand  --sweep FILE --root DIR   # list the runs
    python -m effdet_jax.tools.sweep run     --sweep FILE --root DIR   # one after another, here
    python -m effdet_jax.tools.sweep print   --sweep FILE --root DIR --launcher tpu \
        --launcher_args='--name pod --zone us-central2-b --bucket gs://b'
    python -m effdet_jax.tools.sweep summary --root DIR [--sweep FILE] # a table from metrics.jsonl

Each run's workdir is `<root>/<index>_<key>=<value>_...` (the last component of
each overridden key, the full key where two would clash). `run` writes
`sweep_point.json` (the sweep, the base config, the overrides) into each, which
`summary` reads back with the run's `metrics.jsonl`; `print` writes nothing
(the launchers make the workdirs, on gs:// too), so for its runs give
`summary` the `--sweep` as well.
"""
import argparse
import dataclasses
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

import ml_collections
import tensorflow as tf

from effdet_jax.runtime import cli
from effdet_jax.training.metrics_writer import read_metrics

POINT_FILE = 'sweep_point.json'
LAUNCHERS = ('local', 'tpu', 'slurm')
# The checkout: launch/ scripts, and config paths given relative to it.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def product(values: Dict[str, Sequence[Any]]) -> List[Dict[str, Any]]:
  """Every combination, the last key varying fastest."""
  keys = list(values)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


def zipped(values: Dict[str, Sequence[Any]]) -> List[Dict[str, Any]]:
  """The i-th value of every key together; the lists must be of one length."""
  lengths = {k: len(v) for k, v in values.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f'zipped() needs lists of one length, got {lengths}')
  keys = list(values)
  return [dict(zip(keys, combo)) for combo in zip(*(values[k] for k in keys))]


@dataclasses.dataclass
class Sweep:
  config: str                      # a config file, as for --config: 'effdet_jax/configs/efficientdet.py:d0'
  points: List[Dict[str, Any]]     # override dicts: {'train.learning_rate': 0.08, ...}
  mode: str = 'train_and_eval'
  name: str = ''                   # default: the sweep file's name


@dataclasses.dataclass
class Run:
  name: str
  workdir: str
  overrides: Dict[str, Any]
  flags: List[str]                 # effdet_jax.main's flags for this run


def _load_python_file(path: str, what: str):
  """Execute a sweep or config file as a module."""
  spec = importlib.util.spec_from_file_location(f'effdet_{what}', path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f'no {what} file {path!r}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sweep(path: str) -> Sweep:
  module = _load_python_file(path, 'sweep')
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{path}: a sweep file defines get_sweep() returning effdet_jax.tools.sweep.Sweep')
  sweep = module.get_sweep()
  if not isinstance(sweep, Sweep):
    raise ValueError(f'{path}: get_sweep() returned {type(sweep).__name__}, expected Sweep')
  sweep.name = sweep.name or os.path.splitext(os.path.basename(path))[0]
  return sweep


def load_config(spec: str) -> ml_collections.ConfigDict:
  """A config from a `--config`-style spec: 'path.py' or 'path.py:arg', relative
  to the working directory (as `--config` reads it) or to the checkout."""
  path, _, arg = spec.partition(':')
  module = _load_python_file(path if os.path.exists(path) else os.path.join(ROOT, path), 'config')
  return module.get_config(arg) if arg else module.get_config()


def check_overrides(config: ml_collections.ConfigDict, point: Dict[str, Any], where: str):
  """Every key names a field of the config, and every value fits its type."""
  for key, value in point.items():
    node = config
    parts = key.split('.')
    for depth, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ValueError(f'{where}: {key!r} is not a field of the config '
                         f'(no {".".join(parts[:depth + 1])!r})')
      if depth < len(parts) - 1:
        node = node[part]
    try:
      with node.unlocked():
        node[parts[-1]] = value
    except (TypeError, ValueError) as e:
      raise ValueError(f'{where}: {key}={value!r} does not fit the config ({e})') from e


def flag_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


def _name_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return '-'.join(str(v) for v in value)
  return str(value)


def run_names(points: Sequence[Dict[str, Any]]) -> List[str]:
  keys = list(dict.fromkeys(k for p in points for k in p))
  short = {k: k.split('.')[-1] for k in keys}
  clashes = {s for s in short.values() if list(short.values()).count(s) > 1}
  short = {k: k if s in clashes else s for k, s in short.items()}
  width = len(str(max(len(points) - 1, 0)))
  names = []
  for i, point in enumerate(points):
    parts = [f'{short[k]}={_name_value(v)}' for k, v in point.items()]
    name = f'{i:0{width}d}_' + '_'.join(parts) if parts else f'{i:0{width}d}'
    names.append(re.sub(r'[^A-Za-z0-9._=+-]', '-', name))
  return names


def expand(sweep: Sweep, root: str, where: str = 'sweep') -> List[Run]:
  """One run per point, checked against the base config."""
  if not sweep.points:
    raise ValueError(f'{where}: the sweep has no points')
  base = load_config(sweep.config)
  for i, point in enumerate(sweep.points):
    check_overrides(ml_collections.ConfigDict(base.to_dict()), point, f'{where}: point {i}')
  if '://' not in root:
    root = os.path.abspath(root)
  runs = []
  for name, point in zip(run_names(sweep.points), sweep.points):
    workdir = os.path.join(root, name)
    flags = [f'--config={sweep.config}', f'--workdir={workdir}', f'--mode={sweep.mode}']
    flags += [f'--config.{k}={flag_value(v)}' for k, v in point.items()]
    runs.append(Run(name, workdir, dict(point), flags))
  return runs


def write_points(sweep: Sweep, runs: Sequence[Run]) -> None:
  for run in runs:
    tf.io.gfile.makedirs(run.workdir)
    with tf.io.gfile.GFile(os.path.join(run.workdir, POINT_FILE), 'w') as f:
      json.dump({'sweep': sweep.name, 'config': sweep.config, 'mode': sweep.mode,
                 'name': run.name, 'overrides': run.overrides}, f, indent=1)


def launch_command(run: Run, launcher: str, launcher_args: str, sweep: Sweep) -> List[str]:
  """The command that starts one run with `launcher`."""
  extra = shlex.split(launcher_args)
  overrides = [f for f in run.flags if f.startswith('--config.')]
  if launcher == 'local':
    return [sys.executable, '-m', 'effdet_jax.main', *run.flags]
  if launcher == 'tpu':
    return [sys.executable, os.path.join(ROOT, 'launch', 'tpu_pod.py'), 'train', *extra,
            f'--config={sweep.config}', f'--mode={sweep.mode}', f'--workdir={run.workdir}',
            f'--run={sweep.name}-{run.name.split("_")[0]}', '--', *overrides]
  if launcher == 'slurm':
    return [sys.executable, os.path.join(ROOT, 'launch', 'slurm.py'), *extra, f'--config={sweep.config}',
            f'--mode={sweep.mode}', f'--workdir={run.workdir}',
            f'--job_name={sweep.name}-{run.name.split("_")[0]}', '--', *overrides]
  raise ValueError(f'unknown launcher {launcher!r}; expected one of {LAUNCHERS}')


def summarize(root: str, runs: Optional[Sequence[Run]] = None) -> List[Dict[str, Any]]:
  """Per run under `root`: overrides, last step, final loss, final and best AP.

  The runs are those of `runs` (a sweep's points, expanded) or else the
  workdirs holding `sweep_point.json` (written by `run`)."""
  if not tf.io.gfile.isdir(root):
    raise FileNotFoundError(f'--root {root} does not exist; expected the --root a sweep ran under')
  if runs is None:
    runs = []
    for entry in sorted(tf.io.gfile.listdir(root)):
      point_file = os.path.join(root, entry.rstrip('/'), POINT_FILE)
      if tf.io.gfile.exists(point_file):
        with tf.io.gfile.GFile(point_file) as f:
          point = json.load(f)
        runs.append(Run(point['name'], os.path.dirname(point_file), point['overrides'], []))
  rows = []
  for run in runs:
    records = read_metrics(run.workdir) if tf.io.gfile.isdir(run.workdir) else []
    train = [r for r in records if 'loss' in r]
    evals = [r for r in records if 'AP' in r]
    best = max(evals, key=lambda r: r['AP']) if evals else None
    rows.append({'name': run.name, 'overrides': run.overrides,
                 'step': max((r['step'] for r in records), default=0),
                 'loss': train[-1]['loss'] if train else None,
                 'AP': evals[-1]['AP'] if evals else None,
                 'AP50': evals[-1]['AP50'] if evals else None,
                 'best_AP': best['AP'] if best else None,
                 'best_step': best['step'] if best else None})
  return rows


def sweep_flag(overrides: Dict[str, Any], key: str) -> str:
  return flag_value(overrides[key]) if key in overrides else '-'


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
  keys = list(dict.fromkeys(k for r in rows for k in r['overrides']))
  header = ['run', *keys, 'step', 'loss', 'AP', 'AP50', 'best AP (step)']

  def fmt(value, digits=4):
    if value is None:
      return '-'
    return f'{value:.{digits}f}' if isinstance(value, float) else str(value)

  table = [header]
  for r in rows:
    best = '-' if r['best_AP'] is None else f"{r['best_AP']:.4f} ({r['best_step']})"
    table.append([r['name'].split('_')[0], *(sweep_flag(r['overrides'], k) for k in keys),
                  str(r['step']), fmt(r['loss']), fmt(r['AP']), fmt(r['AP50']), best])
  widths = [max(len(row[i]) for row in table) for i in range(len(header))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split('\n', 1)[1])
  parser.add_argument('command', choices=('expand', 'run', 'print', 'summary'))
  parser.add_argument('--sweep', default='', help='a sweep file (effdet_jax/configs/sweeps/*.py)')
  parser.add_argument('--root', required=True, help='one workdir per run is made under it')
  parser.add_argument('--launcher', default='local', choices=LAUNCHERS, help='print: for which')
  parser.add_argument('--launcher_args', default='', help='print: more arguments for the launcher')
  parser.add_argument('--json', action='store_true', help='summary: JSON lines instead of a table')
  parser.add_argument('-v', '--verbosity', type=int, default=0, help='1: tracebacks on errors')
  args = parser.parse_args(argv)
  try:
    return _command(args, parser)
  except cli.USER_ERRORS as e:
    if args.verbosity >= 1:
      raise
    cli.fail(str(e))


def _command(args, parser) -> int:
  if args.command == 'summary':
    runs = expand(load_sweep(args.sweep), args.root, args.sweep) if args.sweep else None
    rows = summarize(args.root, runs)
    if not rows:
      raise FileNotFoundError(f'no runs under {args.root}: no {POINT_FILE} (written by `run`); '
                              'for runs started from `print`, pass their --sweep')
    print('\n'.join(json.dumps(r) for r in rows) if args.json else format_table(rows))
    return 0
  if not args.sweep:
    parser.error(f'{args.command} needs --sweep')
  sweep = load_sweep(args.sweep)
  runs = expand(sweep, args.root, args.sweep)
  if args.command == 'expand':
    for run in runs:
      print(f'{run.workdir}  {" ".join(run.flags[3:])}')
    return 0
  if args.command == 'print':      # writes nothing: the launchers make the workdirs
    for run in runs:
      print(shlex.join(launch_command(run, args.launcher, args.launcher_args, sweep)))
    return 0
  write_points(sweep, runs)
  failed = []
  for i, run in enumerate(runs):
    print(f'[{i + 1}/{len(runs)}] {run.name}', flush=True)
    if subprocess.run(launch_command(run, 'local', '', sweep)).returncode:
      failed.append(run.name)
  if failed:
    print(f'{len(failed)} of {len(runs)} runs failed: {failed}', file=sys.stderr)
    return 1
  print(format_table(summarize(args.root)))
  return 0


if __name__ == '__main__':
  # Through the module, so sweep files and this code share one `Sweep` class.
  from effdet_jax.tools import sweep as _sweep  # pylint: disable=g-import-not-at-top,import-self
  sys.exit(_sweep.main())
