"""The official optimization recipe: schedule, L2, clipping, SGD or Adam, frozen variables, EMA.

The update works on the parameters raveled into one vector (`ParamLayout`):
per-tensor optimizer, EMA and bookkeeping ops over ~600 leaves made XLA's
compile of the train step twice as long (54 s -> 27 s for the test model on
CPU) for no runtime gain.

Not optax: its momentum (`trace`) is TF1's form only, not the Keras form the
tf2 path needs, and its Adam adds epsilon to the bias-corrected second moment
where TF adds it to the raw one with a corrected step size; each official form
is a few lines here, checked against hand computations in tests/test_optim.py.
"""
import re
from typing import Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util
from jax.flatten_util import ravel_pytree

from effdet_jax.runtime import precision


class Lengths(NamedTuple):
  """A run's schedule in steps."""
  total: int
  warmup: int
  first_drop: int    # stepwise decay: x0.1 from here
  second_drop: int   # and x0.01 from here


def schedule_lengths(train: ml_collections.ConfigDict, examples_per_epoch: int) -> Lengths:
  """The schedule in steps from the config, epochs converted with the global batch
  (`int(epochs * steps_per_epoch)`, as the official)."""
  steps_per_epoch = examples_per_epoch / train.global_batch_size
  total = int(train.num_steps) if train.num_steps > 0 else int(train.num_epochs * steps_per_epoch)
  warmup = (int(train.warmup_steps) if train.warmup_steps > 0
            else int(train.lr_warmup_epochs * steps_per_epoch))
  if total < 1:
    raise ValueError(f'the run has {total} steps: set config.train.num_steps or num_epochs '
                     f'({examples_per_epoch} examples per epoch, global batch {train.global_batch_size})')
  return Lengths(total, max(warmup, 1), int(train.first_lr_drop_epoch * steps_per_epoch),
                 int(train.second_lr_drop_epoch * steps_per_epoch))


LR_DECAYS = ('cosine', 'stepwise', 'polynomial', 'constant')


def learning_rate_schedule(peak: float, warmup_init: float, warmup_steps: int,
                           total_steps: int, decay: str = 'cosine',
                           drop_steps: Tuple[int, int] = (0, 0),
                           power: float = 0.9) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """Linear warm-up from `warmup_init` over `warmup_steps`, then one of the
  official decays (google/automl `det_model_fn.py` and `tf2/train_lib.py` agree),
  all in float32 as there:

  - 'cosine': 0.5 * peak * (1 + cos(pi * step / (total - warmup))). The cosine
    runs over the step count itself, not the steps since warm-up: it is just
    under the peak right after warm-up and reaches 0 at `total - warmup`.
  - 'stepwise': the peak, x0.1 from `drop_steps[0]`, x0.01 from `drop_steps[1]`.
  - 'polynomial': peak * (1 - step / total) ** power.
  - 'constant': the peak from the first step, no warm-up (TF1 only).
  """
  if decay not in LR_DECAYS:
    raise ValueError(f'config.train.lr_decay must be one of {LR_DECAYS}, got {decay!r}')
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if decay == 'constant':
      return jnp.full_like(step, peak)
    warm = warmup_init + step / warmup_steps * (peak - warmup_init)
    if decay == 'cosine':
      decayed = 0.5 * peak * (1 + jnp.cos(jnp.pi * step / decay_steps))
    elif decay == 'polynomial':
      decayed = peak * jnp.power(1 - step / total_steps, power)
    else:
      decayed = jnp.where(step < warmup_steps, warm, peak)
      for mult, start in ((1.0, warmup_steps), (0.1, drop_steps[0]), (0.01, drop_steps[1])):
        decayed = jnp.where(step < start, decayed, peak * mult)
    return jnp.where(step < warmup_steps, warm, decayed)

  return schedule


def config_schedule(train: ml_collections.ConfigDict, lengths: Lengths):
  """The learning rate schedule a config asks for."""
  return learning_rate_schedule(train.learning_rate, train.lr_warmup_init, lengths.warmup,
                                lengths.total, train.lr_decay,
                                (lengths.first_drop, lengths.second_drop), train.poly_lr_power)


class ParamLayout:
  """Model variables <-> flat vectors (of the variables' dtype: float32, or
  float64 for a float64 run), with per-element masks.

  `l2` marks what the official regularizes: names ending in `kernel` (conv and
  dense kernels, depthwise and pointwise ones), not biases, BatchNorm or
  BiFPN fusion weights. `trainable` is 0 where `freeze_regex` matches the
  '/'-joined parameter path.
  """

  def __init__(self, abstract_variables, freeze_regex: str = ''):
    leaves = jax.tree.leaves(abstract_variables['params'])
    self.dtype = jnp.dtype(leaves[0].dtype)
    zeros = lambda tree: jax.tree.map(lambda s: np.zeros(s.shape, self.dtype), tree)
    params = zeros(abstract_variables['params'])
    _, self._unravel_params = ravel_pytree(params)
    stats, self._unravel_stats = ravel_pytree(zeros(abstract_variables.get('batch_stats', {})))
    self.num_stats = int(stats.size)
    flat = traverse_util.flatten_dict(params)
    paths = ['/'.join(k) for k in flat]
    # ravel_pytree orders leaves as jax.tree.leaves does; flatten_dict sorts keys the same way.
    sizes = [x.size for x in jax.tree.leaves(params)]
    assert sizes == [x.size for x in flat.values()]
    self.num_params = int(sum(sizes))
    self.num_tensors = len(sizes)
    self.sizes = np.asarray(sizes, np.int64)
    self.tensor_l2 = np.asarray([k[-1].endswith('kernel') for k in flat], np.float32)
    if freeze_regex:
      pattern = re.compile(freeze_regex)
      frozen = [pattern.search(p) is not None for p in paths]
      if not any(frozen):
        raise ValueError(f'config.train.freeze_regex={freeze_regex!r} matches no parameter '
                         f'(paths look like {paths[0]!r})')
    else:
      frozen = [False] * len(paths)
    self.tensor_trainable = 1.0 - np.asarray(frozen, np.float32)
    self.frozen_tensors = int(sum(frozen))

  def segment_ids(self) -> np.ndarray:
    """Which tensor each element belongs to. The train step takes it as an
    argument: built inside the graph, XLA spends seconds constant-folding it."""
    return np.repeat(np.arange(self.num_tensors, dtype=np.int32), self.sizes)

  def per_element(self, per_tensor, segments: jnp.ndarray) -> jnp.ndarray:
    """Per-tensor values (`[num_tensors]`, static or traced) -> one per element.

    On CPU a gather by segment id. Elsewhere each value broadcast over its
    tensor's static slice: compiled for a TPU v5e (deviceless, libtpu), the
    gather of D0's 493 values by its 3.9M segment ids costs 16 GB and 22 ms by
    XLA's own estimate, the broadcasts 0.05 GB and 0.06 ms. Both give the same
    values."""
    return jax.lax.platform_dependent(jnp.asarray(per_tensor), segments,
                                      cpu=lambda values, ids: values[ids],
                                      default=lambda values, ids: self.broadcast(values))

  def broadcast(self, per_tensor: jnp.ndarray) -> jnp.ndarray:
    """`per_element` without a gather: each value over its tensor's elements."""
    return jnp.concatenate([jnp.broadcast_to(per_tensor[i], (int(n),))
                            for i, n in enumerate(self.sizes)])

  def flatten(self, variables):
    """`{'params', 'batch_stats'}` -> (params vector, batch-stats vector)."""
    return (ravel_pytree(variables['params'])[0].astype(self.dtype),
            self.flatten_stats(variables.get('batch_stats', {})))

  def flatten_stats(self, batch_stats) -> jnp.ndarray:
    return ravel_pytree(batch_stats)[0].astype(self.dtype)

  def variables(self, params, batch_stats):
    return {'params': self._unravel_params(params), 'batch_stats': self._unravel_stats(batch_stats)}


def l2_loss(params: jnp.ndarray, mask: jnp.ndarray, weight_decay: float) -> jnp.ndarray:
  """weight_decay * sum(v^2) / 2 over the masked variables, as tf.nn.l2_loss."""
  return weight_decay * 0.5 * jnp.sum(jnp.square(params) * mask)


def clip_gradients(grads: jnp.ndarray, segments: jnp.ndarray, layout: ParamLayout,
                   max_norm: float) -> jnp.ndarray:
  """As the official: each tensor to norm <= max_norm, then all of them together."""
  norms = jnp.sqrt(jax.ops.segment_sum(jnp.square(grads), segments,
                                       num_segments=layout.num_tensors))
  grads = grads * layout.per_element(jnp.minimum(1.0, max_norm / jnp.maximum(norms, 1e-30)),
                                     segments)
  total = jnp.sqrt(jnp.sum(jnp.square(grads)))
  return grads * jnp.minimum(1.0, max_norm / jnp.maximum(total, 1e-30))


OFFICIAL_PATHS = ('tf1', 'tf2')


def check_official_path(path: str) -> str:
  if path not in OFFICIAL_PATHS:
    raise ValueError(f'config.train.official_path must be one of {OFFICIAL_PATHS}, got {path!r}')
  return path


def l2_per_tensor(layout: 'ParamLayout', official_path: str) -> np.ndarray:
  """Which tensors the L2 loss covers: every kernel (TF1's `det_model_fn` sums
  over all trainable variables, frozen ones too) or only the trained ones (TF2's
  `train_lib` sums over the variables it updates)."""
  if check_official_path(official_path) == 'tf2':
    return layout.tensor_l2 * layout.tensor_trainable
  return layout.tensor_l2


def sgd_momentum(params, momentum, grads, learning_rate, beta: float, official_path: str):
  """SGD with momentum in the official form; `momentum` is the optimizer's slot.

  - 'tf1', TF1 `MomentumOptimizer`: accum = beta * accum + grad; param -= lr * accum.
  - 'tf2', Keras `SGD`: v = beta * v - lr * grad; param += v.
  They agree while the learning rate is constant and differ when it changes
  (warm-up, decay): TF1's accumulated gradients are scaled by the current rate,
  Keras' velocity keeps the rates its gradients were taken with. Both take beta
  as a float32 constant (`precision.as_tf_constant`).
  """
  beta = precision.as_tf_constant(beta, params.dtype)
  if check_official_path(official_path) == 'tf2':
    velocity = beta * momentum - learning_rate * grads
    return params + velocity, velocity
  momentum = beta * momentum + grads
  return params - learning_rate * momentum, momentum


OPTIMIZERS = ('sgd', 'adam')
ADAM_BETA_2 = 0.999


def check_optimizer(name: str) -> str:
  if name not in OPTIMIZERS:
    raise ValueError(f'config.train.optimizer must be one of {OPTIMIZERS}, got {name!r}')
  return name


def adam_hyperparameters(momentum: float, official_path: str) -> Tuple[float, float]:
  """(beta_1, epsilon) of the official Adam.

  - 'tf2', Keras `Adam(lr, beta_1=momentum)`: epsilon 1e-7.
  - 'tf1', `tf.train.AdamOptimizer(lr)`: the official passes no momentum, so
    beta_1 is TF's default 0.9 whatever `train.momentum` says; epsilon 1e-8.
  """
  if check_official_path(official_path) == 'tf2':
    return momentum, 1e-7
  return 0.9, 1e-8


def adam_step_size(learning_rate, step, beta_1: float):
  """lr * sqrt(1 - b2^t) / (1 - b1^t) with t = step + 1 (`step`: updates made before)."""
  t = jnp.asarray(step, jnp.float32) + 1.0
  return learning_rate * jnp.sqrt(1.0 - ADAM_BETA_2 ** t) / (1.0 - beta_1 ** t)


def adam(params, first, second, grads, step_size, beta_1: float, epsilon: float):
  """Adam as TF's kernels write it (L2 is in the loss, as the official has it);
  `first`, `second` are the moment slots:
  m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); w -= step_size * m / (sqrt(v) + epsilon).
  """
  first = first + (grads - first) * (1.0 - beta_1)
  second = second + (jnp.square(grads) - second) * (1.0 - ADAM_BETA_2)
  return params - first * step_size / (jnp.sqrt(second) + epsilon), first, second


def ema_decay(base: float, step: jnp.ndarray, official_path: str) -> jnp.ndarray:
  """The official dynamic decay min(decay, (1 + t) / (10 + t)), so early averages
  are not dominated by the initialization. `step` is the number of updates made
  before this one. TF2's tf-addons `MovingAverage` takes t = step (0.1 at the
  first update); TF1's `ExponentialMovingAverage(num_updates=global_step)` runs
  after the update has incremented the global step, t = step + 1 (2/11)."""
  step = jnp.asarray(step, jnp.float32)
  if check_official_path(official_path) == 'tf1':
    step = step + 1.0
  return jnp.minimum(base, (1.0 + step) / (10.0 + step))


def ema_update(average: jnp.ndarray, new: jnp.ndarray, decay, official_path: str) -> jnp.ndarray:
  """average -= (average - new) * (1 - decay), the official form; `decay` is
  float32 (`ema_decay`). TF1's `assign_moving_average` takes 1 - decay in float32,
  then casts; Keras' `moving_average_update` (tf-addons, TF2) casts decay first."""
  if check_official_path(official_path) == 'tf1':
    rate = (1.0 - decay).astype(average.dtype)
  else:
    rate = 1.0 - decay.astype(average.dtype)
  return average - (average - new) * rate
