"""The benchmark's timing: the first call alone, then warm-up, then the timed calls."""
import io
import time

from effdet_jax.tools import timing


def test_the_first_call_is_timed_alone_and_left_out_of_the_median():
  durations = iter([0.2] + [0.0] * 10)
  calls = []

  def call():
    calls.append(1)
    time.sleep(next(durations))

  log = io.StringIO()
  timed = timing.measure(call, repeats=3, warmup=2, label='step', log=log)
  assert len(calls) == 1 + 1 + 3              # first, one more warm-up, three timed
  assert timed['first_call_s'] >= 0.2
  assert timed['median_s'] < 0.1 and timed['min_s'] <= timed['median_s']
  assert log.getvalue().splitlines()[0] == 'step: first call ...'


def test_no_warmup_still_makes_one_first_call():
  calls = []
  timing.measure(lambda: calls.append(1), repeats=2, warmup=0)
  assert len(calls) == 3
