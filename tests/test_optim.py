"""The two official optimizer paths, each against a hand computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effdet_jax import optim


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
