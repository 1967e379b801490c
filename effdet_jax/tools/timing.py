"""Timing of compiled calls, shared by the benchmark's modes.

The first call after compilation is timed on its own: on an accelerator it can
include work that compilation left for run time (kernel loading, cuDNN plan
building), and a first call that never returns must be told apart from a
compile that never ends, so the progress is written to stderr as it goes.
"""
import statistics
import sys
import time
from typing import Callable, Dict


def measure(call: Callable[[], None], repeats: int, warmup: int, label: str = '',
            log=sys.stderr) -> Dict[str, float]:
  """`call()` runs one step and blocks until its results are ready. The first
  call is timed alone, then `warmup - 1` more are left out, then `repeats`
  timed; seconds."""
  if label:
    print(f'{label}: first call ...', file=log, flush=True)
  start = time.perf_counter()
  call()
  first_call_s = time.perf_counter() - start
  if label:
    print(f'{label}: first call {first_call_s:.3f} s; {repeats} timed calls ...', file=log,
          flush=True)
  for _ in range(warmup - 1):
    call()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return {'first_call_s': first_call_s, 'median_s': statistics.median(times), 'min_s': min(times)}


def compile_timed(fn, *args, label: str = '', log=sys.stderr):
  """`fn.lower(*args).compile()` and its seconds."""
  if label:
    print(f'{label}: compiling ...', file=log, flush=True)
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - start
  if label:
    print(f'{label}: compiled in {seconds:.1f} s', file=log, flush=True)
  return compiled, seconds
