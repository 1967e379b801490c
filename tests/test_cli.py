"""A user's mistake ends a command with one `error:` line, a bug with its traceback."""
import subprocess
import sys

from processes import ROOT, env


def _export(*flags):
  return subprocess.run([sys.executable, '-m', 'effdet_jax.export', '--config',
                         'configs/efficientdet.py:lite0', '--checkpoint', '/absent/run',
                         '--output', '/tmp/never', *flags],
                        cwd=ROOT, env=env(1), capture_output=True, text=True, timeout=300)


def test_a_missing_checkpoint_is_one_error_line_and_verbosity_shows_the_traceback():
  out = _export()
  assert out.returncode == 1
  assert 'Traceback' not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and '/absent/run' in last, out.stderr[-2000:]
  verbose = _export('--verbosity=1')
  assert verbose.returncode != 0 and 'Traceback' in verbose.stderr
