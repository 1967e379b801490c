"""The CPU formulations (matmul, shifted multiply-adds, hand-written gradients) equal
XLA's convolutions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effdet_jax.models import bifpn, layers
from effdet_jax.runtime import cpu_kernels, precision


@pytest.mark.parametrize('size,kernel,stride', [
    ((16, 16), 3, 1), ((16, 16), 3, 2), ((15, 17), 5, 2), ((9, 8), 5, 1), ((7, 7), 3, 2)])
def test_depthwise_formulations_agree(size, kernel, stride):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, *size, 6))
  w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, 6, 1))
  native = layers.depthwise_conv2d(x, w, stride, 'native')
  shifted = layers.depthwise_conv2d(x, w, stride, 'matmul')
  assert native.shape == (2, -(-size[0] // stride), -(-size[1] // stride), 6)
  np.testing.assert_allclose(shifted, native, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('shape,kernel,stride', [
    ((2, 16, 16, 6), 3, 1), ((2, 15, 17, 6), 5, 2), ((2, 7, 7, 6), 3, 2), ((1, 2, 3, 4), 5, 2),
    ((1, 1, 1, 4), 3, 2), ((2, 1, 2, 3), 5, 2),      # taps that read only padding
    ((3, 40, 33, 24), 3, 1), ((3, 41, 30, 24), 5, 2)])   # the last two: split over threads
def test_depthwise_gradients_agree(shape, kernel, stride):
  """The shifted formulation's own gradients, with the CPU kernels and with XLA
  alone, equal autodiff of XLA's convolution."""
  assert cpu_kernels.targets() is not None, 'the CPU kernels did not build'
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, shape[-1], 1))
  cotangent = jax.random.normal(jax.random.PRNGKey(2), (shape[0], -(-shape[1] // stride),
                                                         -(-shape[2] // stride), shape[-1]))
  grads = {impl: jax.jit(jax.grad(lambda x, w: jnp.sum(layers.depthwise_conv2d(x, w, stride, impl)
                                                       * cotangent), argnums=(0, 1)))(x, w)
           for impl in ('native', 'matmul')}
  xla_only = layers._xla_depthwise_grads(stride, x, w[..., 0], cotangent)
  for name, (grad_x, grad_w) in (('cpu kernels', grads['matmul']), ('xla', xla_only)):
    np.testing.assert_allclose(grad_x, grads['native'][0], atol=1e-4, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(grad_w.reshape(w.shape), grads['native'][1], atol=1e-3, rtol=1e-5,
                               err_msg=name)


def test_pointwise_formulations_agree():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 12))
  w = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 12, 20))
  np.testing.assert_allclose(layers.conv2d(x, w, 1, 'matmul'), layers.conv2d(x, w, 1, 'native'),
                             atol=1e-5, rtol=1e-5)


def test_same_padding_puts_the_extra_pixel_last():
  assert layers.same_padding(512, 3, 2) == (0, 1)
  assert layers.same_padding(64, 5, 2) == (1, 2)
  assert layers.same_padding(7, 3, 1) == (1, 1)
  # A stride-2 3x3 conv over an even size reads rows 0..2 first: no top padding.
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  w = jnp.zeros((3, 3, 1, 1)).at[0, 0, 0, 0].set(1.0)
  np.testing.assert_array_equal(layers.conv2d(x, w, 2, 'native')[0, :, :, 0], [[0, 2], [8, 10]])


def test_max_pool_ignores_padding():
  x = -jnp.ones((1, 4, 4, 1))
  assert float(layers.max_pool_same(x, (3, 3), (2, 2)).max()) == -1.0


def test_resize_nearest_matches_tf1_indexing():
  x = jnp.arange(3.0).reshape(1, 3, 1, 1)
  # in 3 -> out 5: source row floor(i * 3 / 5)
  np.testing.assert_array_equal(layers.resize_nearest(x, 5, 1)[0, :, 0, 0], [0, 0, 1, 1, 2])
  y = jnp.arange(4.0).reshape(1, 2, 2, 1)
  np.testing.assert_array_equal(layers.resize_nearest(y, 4, 4)[0, :, :, 0],
                                np.repeat(np.repeat(np.arange(4.0).reshape(2, 2), 2, 0), 2, 1))


def test_batch_norm_inference_and_training():
  bn = layers.BatchNorm(momentum=0.9, epsilon=1e-3)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 5)) * 2 + 1
  variables = bn.init(jax.random.PRNGKey(1), x, train=False)
  variables = {'params': {'scale': jnp.full(5, 2.0), 'bias': jnp.full(5, 0.5)},
               'batch_stats': {'mean': jnp.full(5, 1.0), 'var': jnp.full(5, 4.0)}}
  y = bn.apply(variables, x, train=False)
  np.testing.assert_allclose(y, (x - 1.0) / np.sqrt(4.0 + 1e-3) * 2.0 + 0.5, rtol=1e-5, atol=1e-5)
  y, updates = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3) * 2.0 + 0.5, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.9 * 1.0 + 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'], 0.9 * 4.0 + 0.1 * var, rtol=1e-5)


def test_batch_norm_moving_statistics_in_float64_take_a_float32_rate():
  """Keras' update, ra -= (ra - batch) * (1 - momentum), with 1 - momentum a
  float32 constant: in float64 the rate is float32(0.01), not 0.01."""
  with jax.enable_x64(True):
    bn = layers.BatchNorm(momentum=0.99, epsilon=1e-3, dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 2), jnp.float64)
    variables = {'params': {'scale': jnp.ones(2, jnp.float64), 'bias': jnp.zeros(2, jnp.float64)},
                 'batch_stats': {'mean': jnp.full(2, 0.5, jnp.float64),
                                 'var': jnp.full(2, 2.0, jnp.float64)}}
    _, updates = bn.apply(variables, x, train=True, mutable=['batch_stats'])
    xs = np.asarray(x)
    mean = xs.mean((0, 1, 2))
    var = np.maximum((xs ** 2).mean((0, 1, 2)) - mean ** 2, 0)
    rate = np.float64(np.float32(1 - 0.99))
    assert rate != 1 - 0.99
    np.testing.assert_allclose(updates['batch_stats']['mean'], 0.5 - (0.5 - mean) * rate,
                               rtol=1e-15)
    np.testing.assert_allclose(updates['batch_stats']['var'], 2.0 - (2.0 - var) * rate, rtol=1e-15)
    # 0.01 itself would be 1e-10 (relative) away
    assert np.abs(updates['batch_stats']['mean'] - (0.5 - (0.5 - mean) * 0.01)).max() > 1e-12


def test_upsampling_in_float32_rounds_a_float64_model_only():
  """`upsample_in_float32` (the official `_upsample2d` cast): in float64 the
  upsampled values and their gradients are float32 numbers; in float32 nothing changes."""
  def resample(dtype, in_float32):
    module = bifpn.ResampleFeatureMap(3, True, False, 0.99, 1e-3, 'native', dtype, in_float32)
    def forward(x, w):
      return jnp.sum(module.apply({}, x, (4, 4), train=False) * w), module.apply({}, x, (4, 4),
                                                                              train=False)
    return jax.value_and_grad(forward, has_aux=True)
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 2, 2, 3), jnp.float64)
    w = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 4, 3), jnp.float64)
    (_, exact), grad_exact = resample(jnp.float64, False)(x, w)
    (_, rounded), grad_rounded = resample(jnp.float64, True)(x, w)
    assert exact.dtype == rounded.dtype == jnp.float64
    as_float32 = lambda a: np.asarray(a).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(rounded, as_float32(exact))
    np.testing.assert_array_equal(grad_rounded, as_float32(grad_rounded))
    assert np.abs(rounded - exact).max() > 0 and np.abs(grad_rounded - grad_exact).max() > 0
    np.testing.assert_allclose(grad_rounded, grad_exact, atol=1e-6)
  x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
  (_, plain), grad_plain = resample(jnp.float32, False)(x32, w32)
  (_, flagged), grad_flagged = resample(jnp.float32, True)(x32, w32)
  np.testing.assert_array_equal(plain, flagged)
  np.testing.assert_array_equal(grad_plain, grad_flagged)


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match='conv_impl'):
    layers.resolve_conv_impl('fast')
  with pytest.raises(ValueError, match='model.dtype'):
    precision.compute_dtype('half')
  with pytest.raises(ValueError, match='act_type'):
    layers.activation(jnp.zeros(1), 'gelu')


@pytest.mark.parametrize('size,kernel,stride,cin', [
    ((16, 16), 3, 2, 3), ((15, 13), 3, 2, 4), ((9, 10), 3, 1, 5), ((8, 8), 5, 2, 2)])
def test_dense_formulations_agree(size, kernel, stride, cin):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, *size, cin))
  w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, cin, 7))
  np.testing.assert_allclose(layers.conv2d(x, w, stride, 'matmul'),
                             layers.conv2d(x, w, stride, 'native'), atol=1e-4, rtol=1e-5)


def test_input_scale_equals_scaling_the_input():
  """A per-image channel scale folded into the 1x1 kernel (the squeeze-excite gate at inference)."""
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(keys[0], (2, 5, 7, 6))
  scale = jax.random.uniform(keys[1], (2, 6))
  conv = layers.Conv(4, 1, use_bias=False, impl='matmul')
  variables = conv.init(keys[2], x)
  np.testing.assert_allclose(conv.apply(variables, x, input_scale=scale),
                             conv.apply(variables, x * scale[:, None, None, :]),
                             atol=1e-6, rtol=1e-5)
  wide = layers.Conv(4, 3, use_bias=False, impl='matmul')
  with pytest.raises(ValueError, match='1x1 stride-1'):
    wide.init(keys[2], x, input_scale=scale)
