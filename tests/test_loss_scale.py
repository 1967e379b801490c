"""float16's dynamic loss scale: Keras' rule, the skip-and-shrink path in the real
train step, and a float16 run that resumes exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_train_config
from effdet_jax.data import input_pipeline
from effdet_jax.models.variables import abstract_variables, init_variables
from effdet_jax.training import checkpoint, loss_scale, optim, train
from effdet_jax.training.metrics_writer import read_metrics
from effdet_jax.training.step import create_state, make_train_step


def _state(scale, good=0, overflows=0):
  return {'scale': jnp.float32(scale), 'good_steps': jnp.int32(good),
          'overflow_steps': jnp.int32(overflows)}


def _after(state, loss_finite, grads_finite, growth=3):
  new = loss_scale.update(state, jnp.bool_(loss_finite), jnp.bool_(grads_finite), growth)
  return float(new['scale']), int(new['good_steps']), int(new['overflow_steps'])


def test_the_scale_doubles_after_growth_steps_finite_steps_in_a_row():
  state = _state(2.0 ** 15)
  seen = []
  for _ in range(7):
    seen.append(_after(state, True, True))
    state = _state(*seen[-1])
  assert [s[:2] for s in seen] == [(2.0 ** 15, 1), (2.0 ** 15, 2), (2.0 ** 16, 0),
                                   (2.0 ** 16, 1), (2.0 ** 16, 2), (2.0 ** 17, 0),
                                   (2.0 ** 17, 1)]


def test_an_overflow_halves_the_scale_resets_the_count_and_is_counted():
  assert _after(_state(2.0 ** 15, good=2), True, False) == (2.0 ** 14, 0, 1)
  assert _after(_state(3.0, overflows=4), True, False) == (1.5, 0, 5)
  # Never below 1; there an overflow is a non-finite step like any other.
  assert _after(_state(1.5), True, False) == (1.0, 0, 1)
  assert _after(_state(1.0), True, False) == (1.0, 0, 0)
  assert not loss_scale.overflowed(_state(1.0), jnp.bool_(True), jnp.bool_(False))
  # A non-finite loss is no overflow (a smaller scale cannot cure it), but it halves the scale.
  assert _after(_state(8.0, good=1), False, False) == (4.0, 0, 0)
  # The scale does not grow past float32's range.
  assert _after(_state(2.0 ** 127, good=2), True, True) == (2.0 ** 127, 0, 0)


@pytest.mark.parametrize('field, value', [('loss_scale', 0.5), ('loss_scale_growth_steps', 0)])
def test_bad_settings_are_refused_naming_the_field(field, value):
  config = tiny_train_config.get_config()
  config.train[field] = value
  with pytest.raises(ValueError, match=f'config.train.{field} must be'):
    loss_scale.initial(config.train)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('tiny_data'))
  tiny_train_config.write_data(root)
  return root


def _float16_config(data_root, **train):
  config = tiny_train_config.get_config(data_root)
  config.train.precision = 'float16'
  for k, v in train.items():
    config.train[k] = v
  return config


def test_overflowing_steps_are_skipped_and_shrink_the_scale_until_it_fits(data_root):
  # 2**24 is far above what this model's float16 gradients fit under (~2**19):
  # the first steps overflow, change nothing and halve the scale.
  config = _float16_config(data_root, loss_scale=2.0 ** 24, loss_scale_growth_steps=2)
  variables = init_variables(config, jax.random.PRNGKey(0))
  layout = optim.ParamLayout(abstract_variables(config))
  step = jax.jit(make_train_step(config, layout, optim.learning_rate_schedule(0.02, 0.002, 2, 20)))
  batch = next(input_pipeline.train_data(config, process_index=0, process_count=1)
               .dataset.as_numpy_iterator())
  batch = {k: batch[k] for k in input_pipeline.TRAIN_DEVICE_KEYS}
  assert batch['image'].dtype == np.float16
  segments = jnp.asarray(layout.segment_ids())
  state = create_state(variables, layout, config)
  skipped = updated = 0
  for _ in range(12):
    before = jax.device_get(state)
    state = step(state, batch, segments)
    after = jax.device_get(state)
    scale, new_scale = before.loss_scale['scale'], after.loss_scale['scale']
    assert after.first_nonfinite_step == -1 and after.skipped_steps == 0
    if np.array_equal(after.params, before.params):     # an overflow: skipped
      skipped += 1
      assert new_scale == scale / 2 and after.loss_scale['good_steps'] == 0
      assert np.array_equal(after.momentum, before.momentum)
      assert np.array_equal(after.ema_params, before.ema_params)
    else:
      updated += 1
      good = before.loss_scale['good_steps'] + 1
      assert (new_scale, after.loss_scale['good_steps']) == (
          (scale * 2, 0) if good == 2 else (scale, good))
    assert after.loss_scale['overflow_steps'] == skipped
  assert skipped >= 2 and updated >= 4, (skipped, updated)
  assert np.isfinite(after.params).all()


def test_float16_resumes_exactly_with_its_loss_scale(data_root, tmp_path):
  # Overflows at first, then growth every 3 steps: the scale changes along the way.
  config = _float16_config(data_root, loss_scale=2.0 ** 21, loss_scale_growth_steps=3,
                           num_steps=12, log_every_steps=4, checkpoint_every_steps=4)
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  train.train(config, straight)
  train.train(config, resumed, stop_at_step=6)
  train.train(config, resumed)
  states = []
  for workdir in (straight, resumed):
    ckpts = checkpoint.TrainCheckpoints(workdir, keep=3)
    states.append(ckpts.restore_on_one_device(12))
    ckpts.close()
  a, b = states
  assert a['loss_scale']['overflow_steps'] >= 1
  for key in ('scale', 'good_steps', 'overflow_steps'):
    assert a['loss_scale'][key] == b['loss_scale'][key], key
  # The same program on the same devices: measured identical here; the tolerance
  # only absorbs a CPU whose threads could sum in another order.
  for key in ('params', 'momentum', 'ema_params', 'batch_stats'):
    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)
  rows = {r['step']: r for r in read_metrics(straight)}
  resumed_rows = {r['step']: r for r in read_metrics(resumed)}
  assert sorted(rows) == [4, 8, 12] and sorted(resumed_rows) == [4, 6, 8, 12]   # 6: the stop
  for s in rows:
    assert rows[s]['loss_scale'] == resumed_rows[s]['loss_scale']
    assert rows[s]['overflow_steps'] == resumed_rows[s]['overflow_steps']
    np.testing.assert_allclose(rows[s]['loss'], resumed_rows[s]['loss'], rtol=1e-5)
