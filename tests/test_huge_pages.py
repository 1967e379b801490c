"""The commands restart once with glibc's huge-page tunable, and only where it does something."""
import json
import os
import subprocess
import sys

import pytest

from effdet_jax.runtime import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tunable_is_added_once_and_can_be_switched_off(monkeypatch):
  monkeypatch.setattr(huge_pages, '_kernel_allows', lambda: True)
  monkeypatch.setattr(huge_pages, '_glibc_version', lambda: (2, 36))
  monkeypatch.setattr(huge_pages.sys, 'platform', 'linux')
  env = huge_pages.environment_with_tunable({'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert env == {'PATH': '/bin',
                 'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'}
  assert huge_pages.environment_with_tunable(env) is None          # no second restart
  assert huge_pages.environment_with_tunable({'EFFDET_JAX_HUGE_PAGES': '0'}) is None
  monkeypatch.setattr(huge_pages, '_glibc_version', lambda: (2, 34))  # tunable unknown there
  assert huge_pages.environment_with_tunable({}) is None
  monkeypatch.setattr(huge_pages, '_glibc_version', lambda: None)     # musl, macOS
  assert huge_pages.environment_with_tunable({}) is None


def test_reexec_keeps_the_command_line():
  if huge_pages.environment_with_tunable({}) is None:
    pytest.skip('huge pages do nothing on this machine (glibc < 2.35 or THP off)')
  script = ('import os, sys\n'
            'from effdet_jax.runtime import huge_pages\n'
            'print("start", flush=True)\n'
            'huge_pages.reexec_with_huge_pages()\n'
            'print(sys.argv[1:], huge_pages.active())\n')
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', huge_pages.OPT_OUT)}
  env['PYTHONPATH'] = ROOT
  out = subprocess.run([sys.executable, '-c', script, 'a', '--b=c'], env=env, check=True,
                       capture_output=True, text=True).stdout.splitlines()
  assert out == ['start', 'start', "['a', '--b=c'] True"]
  env[huge_pages.OPT_OUT] = '0'
  out = subprocess.run([sys.executable, '-c', script, 'a'], env=env, check=True,
                       capture_output=True, text=True).stdout.splitlines()
  assert out == ['start', "['a'] False"]


def test_main_and_the_benchmark_restart_with_huge_pages_before_importing_tf():
  if huge_pages.environment_with_tunable({}) is None:
    pytest.skip('huge pages do nothing on this machine (glibc < 2.35 or THP off)')
  from effdet_jax.runtime import startup
  assert startup.command(['python', '-m', 'effdet_jax.main', '--x=1']) == 'effdet_jax.main'
  assert startup.command(['python', 'script.py']) == ''
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', huge_pages.OPT_OUT)}
  env['PYTHONPATH'] = ROOT
  out = subprocess.run([sys.executable, '-m', 'effdet_jax.tools.benchmark', '--config',
                        'effdet_jax/configs/efficientdet.py:lite0', '--mode', 'postprocess',
                        '--batch_size', '1',
                        '--repeats', '1', '--warmup', '0', '--json'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout.splitlines()[-1])['huge_pages'] is True
