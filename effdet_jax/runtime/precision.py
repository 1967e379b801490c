"""The numeric precision of a run: what the network computes in, what the weights are kept in.

- `float32`: everything in float32 (the default).
- `bfloat16`: convolutions and activations in bfloat16, weights, BatchNorm
  statistics, losses and updates in float32.
- `float16`: the same split in float16 (the official's `mixed_float16`, for
  GPUs without fast bfloat16); training scales the loss dynamically so small
  gradients do not flush to zero in float16 (`training/loss_scale.py`).
- `float64`: everything in float64, for numerical checks only (comparisons
  with the official implementation run in float64, tests that claim two runs
  are equal). It needs JAX's 64-bit mode, which `configure` turns on before
  anything is traced; on accelerators it is slow or unsupported.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

PRECISIONS = ('float32', 'bfloat16', 'float16', 'float64')


def _check(name: str) -> str:
  if name not in PRECISIONS:
    raise ValueError(f'model.dtype (= train.precision) must be one of {PRECISIONS}, got {name!r}')
  if name == 'float64' and not jax.config.jax_enable_x64:
    raise ValueError("train.precision='float64' needs JAX's 64-bit mode: call "
                     "effdet_jax.runtime.precision.configure(config) before building anything")
  return name


def compute_dtype(name: str):
  """The dtype the network's convolutions and activations run in."""
  return jnp.dtype(_check(name))


def param_dtype(name: str):
  """The dtype of weights, BatchNorm statistics, losses and optimizer state."""
  return jnp.dtype('float64' if _check(name) == 'float64' else 'float32')


def scales_loss(name: str) -> bool:
  """Whether training needs a loss scale: float16's 5 exponent bits flush
  gradients below 6e-8 to zero, bfloat16 has float32's range."""
  return _check(name) == 'float16'


def at_least_float32(x: jax.Array) -> jax.Array:
  """`x` in float32, or kept in float64 if it is (losses and statistics)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def as_tf_constant(value: float, dtype) -> jax.Array:
  """A Python hyperparameter as TF hands it to float64 arithmetic: a float32
  tensor (what `convert_to_tensor` and `tf.cast` make of a Python float), cast.
  Only float64 sees the difference: momentum 0.9 is 0.8999999761581421 there."""
  return jnp.asarray(np.float32(value), dtype)


def configure(config: ml_collections.ConfigDict) -> None:
  """Turn on JAX's 64-bit mode for a float64 run (before anything is traced)."""
  if config.model.dtype == 'float64' and not jax.config.jax_enable_x64:
    jax.config.update('jax_enable_x64', True)
