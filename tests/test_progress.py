"""Progress lines: evaluation reports its rate and ETA as training does."""
import logging
import types

from effdet_jax.inference import progress


def test_format_eta():
  assert progress.format_eta(59) == '0m59s' and progress.format_eta(3725) == '1h02m'


def test_eval_progress_times_from_the_first_batch_and_skips_the_last(caplog, monkeypatch):
  clock = iter([100.0, 150.0, 150.0, 151.0, 200.0, 200.0, 210.0])
  monkeypatch.setattr(progress, 'time', types.SimpleNamespace(time=lambda: next(clock)))
  report = progress.EvalProgress(num_batches=10, images_per_batch=8, every_s=30)
  with caplog.at_level(logging.INFO):
    report.update(1)      # t=100: the first batch (compilation included) starts the clock
    report.update(2)      # t=150: 1 batch in 50 s -> 0.16 img/s, 8 batches left
    report.update(3)      # t=151: under 30 s since the last line
    report.update(4)      # t=200: 3 batches in 100 s
    report.update(10)     # the last batch: the evaluation's own summary follows
  assert [r.getMessage() for r in caplog.records] == [
      'evaluating: batch 2/10 (20%) 0.2 img/s ETA 6m40s',
      'evaluating: batch 4/10 (40%) 0.2 img/s ETA 3m20s']
