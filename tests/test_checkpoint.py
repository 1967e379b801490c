"""Training checkpoints whose bookkeeping differs from the run resuming them: a
metric or a loss scale the checkpoint lacks starts fresh, one it has beyond the
run is dropped, anything else is refused naming the checkpoint."""
import logging
from typing import Dict

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effdet_jax.training import checkpoint


@struct.dataclass
class State:
  params: jnp.ndarray
  metric_sums: Dict[str, jnp.ndarray]
  loss_scale: Dict[str, jnp.ndarray]


def _state(metrics, scaled):
  return State(params=jnp.arange(6, dtype=jnp.float32),
               metric_sums={k: jnp.float32(i + 1) for i, k in enumerate(metrics)},
               loss_scale={'scale': jnp.float32(512.0)} if scaled else {})


def _saved(tmp_path, state):
  ckpts = checkpoint.TrainCheckpoints(str(tmp_path), keep=1)
  ckpts.save(3, state)
  ckpts.wait()
  return ckpts


def _abstract(state):
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return checkpoint.abstract_like(state, sharding)


def test_entries_the_checkpoint_lacks_start_fresh_and_are_named(tmp_path, caplog):
  ckpts = _saved(tmp_path, _state(['loss'], scaled=False))
  target = _state(['loss', 'box_iou_loss'], scaled=True)
  fresh = {'metric_sums': {'loss': jnp.float32(0), 'box_iou_loss': jnp.float32(0)},
           'loss_scale': {'scale': jnp.float32(2.0 ** 15)}}
  with caplog.at_level(logging.WARNING):
    state = ckpts.restore(_abstract(target), 3, fresh=fresh)
  np.testing.assert_array_equal(state.params, np.arange(6))
  assert float(state.metric_sums['loss']) == 1.0            # read, not reset
  assert float(state.metric_sums['box_iou_loss']) == 0.0
  assert float(state.loss_scale['scale']) == 2.0 ** 15
  assert 'loss_scale/scale, metric_sums/box_iou_loss start fresh' in caplog.text
  assert str(tmp_path / 'checkpoints' / '3') in caplog.text
  ckpts.close()


def test_entries_the_run_does_not_keep_are_dropped_and_named(tmp_path, caplog):
  ckpts = _saved(tmp_path, _state(['loss', 'box_iou_loss'], scaled=True))
  with caplog.at_level(logging.WARNING):
    state = ckpts.restore(_abstract(_state(['loss'], scaled=False)), 3, fresh={})
  assert list(state.metric_sums) == ['loss'] and state.loss_scale == {}
  assert float(state.metric_sums['loss']) == 1.0
  assert 'loss_scale/scale, metric_sums/box_iou_loss not used by this run' in caplog.text
  ckpts.close()


def test_a_missing_entry_with_no_fresh_value_is_refused_naming_the_checkpoint(tmp_path):
  ckpts = _saved(tmp_path, _state(['loss'], scaled=False))
  with pytest.raises(ValueError, match=r'checkpoints/3 lacks metric_sums/cls_loss: not a '
                                       r'training state of this model'):
    ckpts.restore(_abstract(_state(['loss', 'cls_loss'], scaled=False)), 3, fresh={})
  ckpts.close()
