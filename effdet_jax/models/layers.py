"""Convolutions with TF `SAME` padding and the official parameter layouts.

Kernels keep TensorFlow's shapes (`HWIO` for convolutions, `[kh, kw, C, 1]` for
depthwise, `[1, 1, Cin, Cout]` for pointwise) so that official checkpoints load
by name alone.

Two formulations compute the same numbers:
- `native`: XLA convolutions (`feature_group_count` for depthwise), what TPU
  and GPU run best.
- `matmul`: 1x1 convolutions as matrix products, other dense ones (the stem)
  as one im2col matrix product, depthwise convolutions as a sum of shifted
  multiply-adds (strided ones on the stride-phase split input). On CPU, XLA's
  grouped convolution is about 10x slower and its 1x1 convolution about 3x
  slower than these.
`auto` picks `matmul` on CPU and `native` elsewhere.
"""
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from effdet_jax.runtime import cpu_kernels, platforms, precision

Initializer = Callable[..., jax.Array]
CONV_IMPLS = ('auto', 'native', 'matmul')


def resolve_conv_impl(impl: str) -> str:
  if impl not in CONV_IMPLS:
    raise ValueError(f'model.conv_impl must be one of {CONV_IMPLS}, got {impl!r}')
  if impl == 'auto':
    return 'matmul' if platforms.current() == 'cpu' else 'native'
  return impl


def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
  """TF `SAME` padding: the extra pixel goes after (bottom/right)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, impl: str) -> jax.Array:
  """Dense convolution, `kernel` in HWIO."""
  kh, kw, cin, cout = kernel.shape
  if impl == 'matmul':
    if kh == 1 and kw == 1 and stride == 1:
      return _channel_matmul(x, kernel[0, 0])
    # im2col: one matmul over (kh*kw*cin)-long patches, taps ordered like HWIO.
    patches = jnp.concatenate(list(_taps(x, kh, kw, stride)), axis=-1)
    return _channel_matmul(patches, kernel.reshape(kh * kw * cin, cout))
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), 'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@jax.custom_vjp
def _channel_matmul(x: jax.Array, weight: jax.Array) -> jax.Array:
  """`x @ weight` over the channel axis of an NHWC tensor.

  Its own gradient so the weight's gradient is one `[C, N] x [N, D]` product
  written as such: autodiff's version ends in a transpose that XLA moves onto
  the activation-sized operand, a transposing copy of every activation's
  gradient (D0 forward + backward on CPU: 6.6 -> 4.5 s at batch 8).
  """
  return jnp.einsum('bhwc,cd->bhwd', x, weight)


def _channel_matmul_fwd(x, weight):
  return jnp.einsum('bhwc,cd->bhwd', x, weight), (x, weight)


def _channel_matmul_bwd(residuals, grad):
  x, weight = residuals
  grad_x = jnp.einsum('bhwd,cd->bhwc', grad, weight)
  grad_w = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1]),
                               (((0,), (0,)), ((), ())),
                               preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))
  return grad_x, grad_w.astype(weight.dtype)


_channel_matmul.defvjp(_channel_matmul_fwd, _channel_matmul_bwd)


def _pad_same(x: jax.Array, kh: int, kw: int, stride: int) -> jax.Array:
  """`x` with TF `SAME` padding, its size rounded up to a multiple of the
  stride (the extra rows and columns are never read)."""
  (top, bottom) = same_padding(x.shape[1], kh, stride)
  (left, right) = same_padding(x.shape[2], kw, stride)
  bottom += -(x.shape[1] + top + bottom) % stride
  right += -(x.shape[2] + left + right) % stride
  return jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))


def _taps(x: jax.Array, kh: int, kw: int, stride: int):
  """The input window under each kernel tap (i, j), row-major, for TF `SAME`.

  With stride > 1 the padded input is split into stride x stride phases first,
  so every tap is a contiguous slice of one phase rather than a strided read.
  """
  out_h = -(-x.shape[1] // stride)
  out_w = -(-x.shape[2] // stride)
  xp = _pad_same(x, kh, kw, stride)
  batch, height, width, channels = xp.shape
  phases = xp.reshape(batch, height // stride, stride, width // stride, stride, channels)
  for i in range(kh):
    for j in range(kw):
      yield phases[:, i // stride:i // stride + out_h, i % stride,
                   j // stride:j // stride + out_w, j % stride, :]


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, stride: int, impl: str) -> jax.Array:
  """Depthwise convolution, `kernel` in TF's `[kh, kw, C, 1]`."""
  kh, kw, channels, multiplier = kernel.shape
  if multiplier != 1:
    raise ValueError(f'depth multiplier {multiplier} is not supported (kernel {kernel.shape})')
  if impl == 'native':
    return jax.lax.conv_general_dilated(
        x, kernel.reshape(kh, kw, 1, channels), (stride, stride), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=channels)
  return _shifted_depthwise(x, kernel[..., 0], stride)


def _shifted_sum(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  kh, kw, _ = kernel.shape
  out = None
  for (i, j), window in zip(np.ndindex(kh, kw), _taps(x, kh, kw, stride)):
    term = window * kernel[i, j]
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shifted_depthwise(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise convolution as shifted multiply-adds, `kernel` `[kh, kw, C]`.

  Its own gradient: on CPU both halves run in hand-written kernels
  (`effdet_jax/runtime/cpu_kernels/depthwise_grads.cc`; D0 train step at batch 8
  5.5 -> 3.7 s with the focal-loss kernel left out). Without them, the kernel's
  gradient is accumulated one output row at a time, all taps at once (autodiff
  makes one reduction over the activation per tap, 3x slower).
  """
  return _shifted_sum(x, kernel, stride)


def _shifted_depthwise_fwd(x, kernel, stride):
  return _shifted_sum(x, kernel, stride), (x, kernel)


def _shifted_depthwise_bwd(stride, residuals, grad):
  x, kernel = residuals
  kernels = cpu_kernels.targets()
  if kernels is None or x.dtype != jnp.float32 or grad.dtype != jnp.float32:
    return _xla_depthwise_grads(stride, x, kernel, grad)
  kh, kw, channels = kernel.shape
  attributes = dict(stride=np.int64(stride),
                    top=np.int64(same_padding(x.shape[1], kh, stride)[0]),
                    left=np.int64(same_padding(x.shape[2], kw, stride)[0]))

  def on_cpu(x, kernel, grad):
    grad_x = jax.ffi.ffi_call(kernels.depthwise_input_grad, jax.ShapeDtypeStruct(
        x.shape, jnp.float32))(grad, kernel.astype(jnp.float32), **attributes)
    grad_k = jax.ffi.ffi_call(kernels.depthwise_kernel_grad, jax.ShapeDtypeStruct(
        (kh, kw, channels), jnp.float32))(x, grad, **attributes)
    return grad_x, grad_k.astype(kernel.dtype)

  return jax.lax.platform_dependent(
      x, kernel, grad, cpu=on_cpu,
      default=lambda x, kernel, grad: _xla_depthwise_grads(stride, x, kernel, grad))


_shifted_depthwise.defvjp(_shifted_depthwise_fwd, _shifted_depthwise_bwd)


def _xla_depthwise_grads(stride, x, kernel, grad):
  _, pullback = jax.vjp(lambda v: _shifted_sum(v, kernel, stride), x)
  (grad_x,) = pullback(grad)
  return grad_x, _depthwise_kernel_grad_rows(x, grad, kernel.shape[:2], stride).astype(kernel.dtype)


def _depthwise_kernel_grad_rows(x: jax.Array, grad: jax.Array, kernel_hw: Tuple[int, int],
                                stride: int) -> jax.Array:
  """XLA's version, one output row at a time (a third the time of one reduction
  over the whole activation per tap). The batch axis is summed after the loop so
  that a batch-sharded step reduces across devices once, not once per row."""
  kh, kw = kernel_hw
  _, out_h, out_w, channels = grad.shape
  xp = _pad_same(x, kh, kw, stride)
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)

  def row(acc, h):
    rows = jax.lax.dynamic_slice_in_dim(xp, h * stride, kh, axis=1)
    g = jax.lax.dynamic_index_in_dim(grad, h, axis=1, keepdims=False)
    taps = [jnp.sum(rows[:, i, j:j + (out_w - 1) * stride + 1:stride] * g, axis=1,
                    dtype=acc_dtype) for i, j in np.ndindex(kh, kw)]
    return acc + jnp.stack(taps, axis=1), None

  init = jnp.zeros((x.shape[0], kh * kw, channels), acc_dtype)
  acc, _ = jax.lax.scan(row, init, jnp.arange(out_h))
  return jnp.sum(acc, axis=0).reshape(kh, kw, channels)


def tf_conv_init(key, shape, dtype=jnp.float32):
  """EfficientNet's conv init: normal with stddev sqrt(2 / fan_out)."""
  fan_out = int(np.prod(shape[:2])) * shape[-1]
  return jax.random.normal(key, shape, dtype) * np.sqrt(2.0 / fan_out)


class Conv(nn.Module):
  """Dense convolution (`kernel`, optional `bias`), TF `SAME` padding."""
  features: int
  kernel_size: int = 1
  stride: int = 1
  use_bias: bool = True
  impl: str = 'native'
  dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.glorot_uniform()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x, input_scale: Optional[jax.Array] = None):
    """`input_scale` ([batch, in_channels], 1x1 kernels only): the convolution of
    `x * input_scale`, computed with each image's kernel scaled instead."""
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features))
    if input_scale is None:
      y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.impl)
    else:
      if k != 1 or self.stride != 1:
        raise ValueError(f'input_scale needs a 1x1 stride-1 convolution, got {k}x{k} stride '
                         f'{self.stride}')
      kernels = input_scale[:, :, None].astype(self.dtype) * kernel[0, 0].astype(self.dtype)
      y = jnp.einsum('bhwc,bcd->bhwd', x.astype(self.dtype), kernels)
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,)).astype(self.dtype)
    return y


class DepthwiseConv(nn.Module):
  """Depthwise convolution without bias, as the EfficientNet blocks use it."""
  kernel_size: int = 3
  stride: int = 1
  impl: str = 'native'
  dtype: Any = jnp.float32
  kernel_init: Initializer = tf_conv_init

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('depthwise_kernel', self.kernel_init, (k, k, x.shape[-1], 1))
    return depthwise_conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.impl)


class SeparableConv(nn.Module):
  """Keras `SeparableConv2D`: depthwise, pointwise, then bias."""
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  impl: str = 'native'
  dtype: Any = jnp.float32
  depthwise_init: Initializer = nn.initializers.glorot_uniform()
  pointwise_init: Initializer = nn.initializers.glorot_uniform()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    channels = x.shape[-1]
    dw = self.param('depthwise_kernel', self.depthwise_init, (k, k, channels, 1))
    pw = self.param('pointwise_kernel', self.pointwise_init, (1, 1, channels, self.features))
    y = depthwise_conv2d(x.astype(self.dtype), dw.astype(self.dtype), 1, self.impl)
    y = conv2d(y, pw.astype(self.dtype), 1, self.impl)
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,)).astype(self.dtype)
    return y


class BatchNorm(nn.Module):
  """BatchNorm over every leading axis of the (global) batch.

  Under `jit` with a batch-sharded input the statistics are reduced across
  devices by XLA, so training gives synchronized BatchNorm without an axis
  name. Inference folds the statistics into one multiply-add,
  `x * inv + (beta - mean * inv)`, the order of TF's fused kernel.
  """
  momentum: float = 0.99
  epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,))
    bias = self.param('bias', nn.initializers.zeros, (channels,))
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((channels,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((channels,), jnp.float32))
    if train:
      axes = tuple(range(x.ndim - 1))
      xf = precision.at_least_float32(x)
      mean = jnp.mean(xf, axes)
      var = jnp.maximum(jnp.mean(jnp.square(xf), axes) - jnp.square(mean), 0.0)
      if not self.is_initializing():
        # Keras' form: ra -= (ra - batch) * (1 - momentum), the rate a float32 constant.
        rate = precision.as_tf_constant(1 - self.momentum, ra_mean.value.dtype)
        ra_mean.value = ra_mean.value - (ra_mean.value - mean) * rate
        ra_var.value = ra_var.value - (ra_var.value - var) * rate
    else:
      mean, var = ra_mean.value, ra_var.value
    inv = jax.lax.rsqrt(var + self.epsilon) * scale
    return x * inv.astype(self.dtype) + (bias - mean * inv).astype(self.dtype)


def batch_norm(train: bool, momentum: float, epsilon: float, dtype: Any, name: str):
  """A BatchNorm applied in train or inference mode, for one-line call sites."""
  module = BatchNorm(momentum, epsilon, dtype, name=name)
  return lambda x: module(x, train)


def activation(x: jax.Array, act_type: str) -> jax.Array:
  if act_type == 'swish':
    return jax.nn.swish(x)
  if act_type == 'relu':
    return jax.nn.relu(x)
  if act_type == 'relu6':
    return jax.nn.relu6(x)
  raise ValueError(f"model.act_type must be 'swish', 'relu' or 'relu6', got {act_type!r}")


def drop_connect(x: jax.Array, survival_prob: float, rng: jax.Array) -> jax.Array:
  """Stochastic depth as the official: keep a whole example with `survival_prob`, rescale."""
  keep = jnp.floor(survival_prob + jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype))
  return x / survival_prob * keep


def max_pool_same(x: jax.Array, window: Sequence[int], strides: Sequence[int]) -> jax.Array:
  """Max-pool with TF `SAME` padding (padding never wins the max)."""
  return nn.max_pool(x, tuple(window), tuple(strides), padding='SAME')


def resize_nearest(x: jax.Array, height: int, width: int) -> jax.Array:
  """TF1 `resize_nearest_neighbor` (no corner alignment, no half-pixel centres)."""
  in_h, in_w = x.shape[1:3]
  if height % in_h == 0 and width % in_w == 0:
    return jnp.repeat(jnp.repeat(x, height // in_h, axis=1), width // in_w, axis=2)
  rows = np.floor(np.arange(height) * (in_h / height)).astype(np.int32)
  cols = np.floor(np.arange(width) * (in_w / width)).astype(np.int32)
  return x[:, rows][:, :, cols]
