"""Training: the loop (`train.py`), one step (`step.py`), the optimizer on flat
vectors (`optim.py`), checkpoints on disk (`checkpoint.py`), the one weights
loader (`weights.py`), metrics (`metrics_writer.py`) and the run's evaluation
(`evaluation.py`)."""
