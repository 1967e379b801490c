"""Dynamic loss scaling for float16 training, as Keras' `LossScaleOptimizer`
(what the official's `mixed_float16` training wraps its optimizer in).

The loss is multiplied by the scale before differentiation, so the float16
gradients of the activations stay above float16's smallest normal number, and
the parameter gradients are multiplied by its reciprocal (exact: the scale is a
power of two). The scale starts at `train.loss_scale` (Keras: 2**15); after
`train.loss_scale_growth_steps` finite steps in a row (Keras: 2000) it doubles;
a step whose gradient overflows is skipped and halves it (never below 1).

Written here rather than taken from jmp (DeepMind's `DynamicLossScale`, the
same rule; optax has none): the state is three arrays of the checkpointed
`TrainState` with the overflow count the log shows, where jmp keeps its own
class, and the rule is a dozen lines.
"""
from typing import Dict

import jax
import jax.numpy as jnp
import ml_collections


def check(train: ml_collections.ConfigDict) -> None:
  if not train.loss_scale >= 1:
    raise ValueError(f'config.train.loss_scale must be >= 1 (Keras starts at 2**15), '
                     f'got {train.loss_scale!r}')
  if not train.loss_scale_growth_steps >= 1:
    raise ValueError(f'config.train.loss_scale_growth_steps must be >= 1 (Keras: 2000), '
                     f'got {train.loss_scale_growth_steps!r}')


def initial(train: ml_collections.ConfigDict) -> Dict[str, jax.Array]:
  """`scale`; `good_steps`, the finite steps since it last changed;
  `overflow_steps`, the steps skipped for an overflow so far (logged)."""
  check(train)
  return {'scale': jnp.asarray(train.loss_scale, jnp.float32),
          'good_steps': jnp.zeros([], jnp.int32),
          'overflow_steps': jnp.zeros([], jnp.int32)}


def overflowed(state: Dict[str, jax.Array], loss_finite: jax.Array,
               grads_finite: jax.Array) -> jax.Array:
  """A finite loss whose scaled gradient overflowed, which a smaller scale may
  cure: the step is skipped and the run goes on. A non-finite loss, or an
  overflow at scale 1 (nothing left to shrink), is non-finite like any other
  step (`train.on_nonfinite`)."""
  return loss_finite & ~grads_finite & (state['scale'] > 1)


def update(state: Dict[str, jax.Array], loss_finite: jax.Array, grads_finite: jax.Array,
           growth_steps: int) -> Dict[str, jax.Array]:
  """The state after a step. Any non-finite step halves the scale, as Keras'."""
  finite = loss_finite & grads_finite
  scale, good = state['scale'], state['good_steps'] + 1
  grow = finite & (good >= growth_steps)
  grown = jnp.where(jnp.isfinite(scale * 2), scale * 2, scale)
  return {'scale': jnp.where(finite, jnp.where(grow, grown, scale), jnp.maximum(scale / 2, 1.0)),
          'good_steps': jnp.where(finite & ~grow, good, 0),
          'overflow_steps': state['overflow_steps']
                            + overflowed(state, loss_finite, grads_finite).astype(jnp.int32)}
