"""The two official optimizer paths, each against a hand computation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effdet_jax.training import optim


def _run_sgd(path, rates, grads, beta=0.9):
  params, slot = jnp.zeros(2), jnp.zeros(2)
  for lr, g in zip(rates, grads):
    params, slot = optim.sgd_momentum(params, slot, jnp.asarray(g), lr, beta, path)
  return np.asarray(params)


def test_momentum_forms_differ_only_when_the_rate_changes():
  grads = [[1.0, -2.0], [0.5, 1.0], [-1.0, 0.25]]
  # TF1 MomentumOptimizer: a = 0.9 a + g; w -= lr a.
  a1 = np.array([1.0, -2.0]); a2 = 0.9 * a1 + [0.5, 1.0]; a3 = 0.9 * a2 + [-1.0, 0.25]
  tf1 = -(0.1 * a1 + 0.2 * a2 + 0.3 * a3)
  # Keras SGD: v = 0.9 v - lr g; w += v.
  v1 = -0.1 * np.array([1.0, -2.0]); v2 = 0.9 * v1 - 0.2 * np.array([0.5, 1.0])
  v3 = 0.9 * v2 - 0.3 * np.array([-1.0, 0.25])
  tf2 = v1 + v2 + v3
  rates = [0.1, 0.2, 0.3]
  np.testing.assert_allclose(_run_sgd('tf1', rates, grads), tf1, rtol=1e-6)
  np.testing.assert_allclose(_run_sgd('tf2', rates, grads), tf2, rtol=1e-6)
  assert np.abs(tf1 - tf2).max() > 0.01
  same = [0.1, 0.1, 0.1]
  np.testing.assert_allclose(_run_sgd('tf1', same, grads), _run_sgd('tf2', same, grads), rtol=1e-6)


def test_ema_decay_warm_up_per_path():
  assert float(optim.ema_decay(0.9998, 0, 'tf2')) == pytest.approx(1 / 10)    # tf-addons, step before
  assert float(optim.ema_decay(0.9998, 0, 'tf1')) == pytest.approx(2 / 11)    # after global_step += 1
  assert float(optim.ema_decay(0.9998, 9, 'tf2')) == pytest.approx(10 / 19)
  assert float(optim.ema_decay(0.9998, 10**6, 'tf1')) == pytest.approx(0.9998)


class _Layout:
  tensor_l2 = np.array([1.0, 1.0, 0.0])          # two kernels and a bias
  tensor_trainable = np.array([0.0, 1.0, 1.0])   # the first kernel frozen


def test_l2_covers_frozen_kernels_in_tf1_only():
  np.testing.assert_array_equal(optim.l2_per_tensor(_Layout, 'tf1'), [1, 1, 0])
  np.testing.assert_array_equal(optim.l2_per_tensor(_Layout, 'tf2'), [0, 1, 0])


def test_unknown_path_is_named():
  with pytest.raises(ValueError, match='official_path'):
    optim.sgd_momentum(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), 0.1, 0.9, 'tf3')


def _two_tensor_layout():
  return optim.ParamLayout({'params': {'a': jax.ShapeDtypeStruct((2,), jnp.float32),
                                       'b': jax.ShapeDtypeStruct((1, 2), jnp.float32)}})


def test_clipping_is_per_tensor_then_global():
  layout = _two_tensor_layout()
  grads = jnp.asarray([30.0, 40.0, 3.0, 4.0])     # tensor norms 50 and 5
  clipped = np.asarray(optim.clip_gradients(grads, jnp.asarray(layout.segment_ids()), layout, 10.0))
  # 50 -> 10 (tf.clip_by_norm), then the global norm sqrt(100 + 25) -> 10.
  first = np.array([6.0, 8.0]); second = np.array([3.0, 4.0])
  np.testing.assert_allclose(clipped, np.concatenate([first, second]) * 10 / np.sqrt(125), rtol=1e-6)


def test_per_element_without_a_gather_gives_the_same_values():
  """The broadcast formulation (TPU, GPU) equals the gather (CPU) exactly."""
  layout = _two_tensor_layout()
  values = jnp.asarray([0.25, -3.0])
  segments = jnp.asarray(layout.segment_ids())
  np.testing.assert_array_equal(layout.per_element(values, segments), [0.25, 0.25, -3.0, -3.0])
  np.testing.assert_array_equal(jax.jit(layout.broadcast)(values),
                                jax.jit(layout.per_element)(values, segments))


def _rates(decay, steps, **kw):
  schedule = optim.learning_rate_schedule(1.0, 0.1, 10, 100, decay, **kw)
  return [float(schedule(s)) for s in steps]


def test_cosine_schedule_is_the_official_formula():
  # 0.1 + s / 10 * 0.9 during warm-up; 0.5 * (1 + cos(pi * s / 90)) after.
  want = [0.1, 0.1 + 5 / 10 * 0.9, 0.5 * (1 + math.cos(math.pi * 10 / 90)),
          0.5 * (1 + math.cos(math.pi * 60 / 90)), 0.0]
  np.testing.assert_allclose(_rates('cosine', [0, 5, 10, 60, 90]), want, rtol=1e-6, atol=1e-7)


def test_stepwise_schedule_drops_tenfold_twice():
  rates = _rates('stepwise', [0, 9, 10, 49, 50, 79, 80, 99], drop_steps=(50, 80))
  np.testing.assert_allclose(rates, [0.1, 0.1 + 0.9 * 0.9, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01],
                             rtol=1e-6)


def test_polynomial_schedule_counts_from_step_zero():
  # peak * (1 - s / total) ** power, s the step itself (not the steps since warm-up).
  rates = _rates('polynomial', [3, 10, 50, 99], power=0.9)
  np.testing.assert_allclose(rates, [0.1 + 0.3 * 0.9, 0.9 ** 0.9, 0.5 ** 0.9, 0.01 ** 0.9],
                             rtol=1e-5)


def test_constant_schedule_has_no_warm_up_and_unknown_decay_is_named():
  assert _rates('constant', [0, 5, 99]) == [1.0, 1.0, 1.0]
  with pytest.raises(ValueError, match='lr_decay'):
    optim.learning_rate_schedule(1.0, 0.1, 10, 100, 'exponential')


def test_drop_epochs_become_steps_as_the_official_converts_them():
  from effdet_jax.configs.efficientdet import get_config
  train = get_config('d0').train
  lengths = optim.schedule_lengths(train, 117266)     # COCO 2017 train, batch 128
  steps_per_epoch = 117266 / 128
  assert lengths == (int(300 * steps_per_epoch), int(steps_per_epoch),
                     int(200 * steps_per_epoch), int(250 * steps_per_epoch))


def _hand_adam(grads, rates, beta_1, epsilon, beta_2=0.999):
  w, m, v = np.zeros(2), np.zeros(2), np.zeros(2)
  for t, (g, lr) in enumerate(zip(grads, rates), start=1):
    g = np.asarray(g)
    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * g * g
    m_hat, v_hat = m / (1 - beta_1 ** t), v / (1 - beta_2 ** t)
    # TF puts epsilon beside sqrt(v), not sqrt(v_hat): epsilon / sqrt(1 - b2^t) here.
    w = w - lr * m_hat / (np.sqrt(v_hat) + epsilon / np.sqrt(1 - beta_2 ** t))
  return w


@pytest.mark.parametrize('path,beta_1,epsilon', [('tf1', 0.9, 1e-8), ('tf2', 0.8, 1e-7)])
def test_adam_is_the_official_one_on_each_path(path, beta_1, epsilon):
  """tf2 takes beta_1 from train.momentum (0.8 here); tf1 keeps TF's 0.9."""
  grads = [[1.0, -2e-7], [0.5, 1e-7], [-1.0, 3e-7]]
  rates = [0.1, 0.2, 0.3]
  momentum = 0.8
  assert optim.adam_hyperparameters(momentum, path) == (beta_1, epsilon)
  params, first, second = jnp.zeros(2), jnp.zeros(2), jnp.zeros(2)
  for step, (g, lr) in enumerate(zip(grads, rates)):
    size = optim.adam_step_size(lr, step, beta_1)
    params, first, second = optim.adam(params, first, second, jnp.asarray(g), size, beta_1,
                                       epsilon)
  # float32 as TF: 1 - 0.999^t alone rounds by ~6e-5 relative.
  np.testing.assert_allclose(params, _hand_adam(grads, rates, beta_1, epsilon), rtol=5e-4)
  # The tiny second gradient makes epsilon matter: another epsilon is far off there.
  other = _hand_adam(grads, rates, beta_1, 1e-7 if epsilon == 1e-8 else 1e-8)
  assert abs(other[1] / float(params[1]) - 1) > 0.1


def test_float64_updates_take_tf_float32_constants():
  """In float64 the official hands its Python hyperparameters over as float32
  tensors: momentum 0.9 is float32(0.9), and each EMA path rounds its rate
  where TF does (tf1: 1 - decay in float32; tf2: decay cast, then 1 - decay)."""
  with jax.enable_x64(True):
    beta = np.float64(np.float32(0.9))
    assert beta != 0.9
    g = np.array([0.5, -1.5])
    slot = np.array([1.0, 2.0])
    _, velocity = optim.sgd_momentum(jnp.zeros(2), jnp.asarray(slot), jnp.asarray(g), 0.1, 0.9,
                                     'tf2')
    np.testing.assert_array_equal(velocity, beta * slot - 0.1 * g)
    _, accumulator = optim.sgd_momentum(jnp.zeros(2), jnp.asarray(slot), jnp.asarray(g), 0.1,
                                        0.9, 'tf1')
    np.testing.assert_array_equal(accumulator, beta * slot + g)

    decay = optim.ema_decay(0.9998, 0, 'tf2')
    assert decay.dtype == jnp.float32
    average, new = np.array([1.0, -3.0]), np.array([0.25, 2.0])
    rates = {'tf1': np.float64(np.float32(1) - np.float32(decay)),
             'tf2': 1 - np.float64(np.float32(decay))}
    assert rates['tf1'] != rates['tf2']
    for path, rate in rates.items():
      got = optim.ema_update(jnp.asarray(average), jnp.asarray(new), decay, path)
      assert got.dtype == jnp.float64
      np.testing.assert_array_equal(got, average - (average - new) * rate)
