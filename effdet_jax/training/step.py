"""The training state and the one jitted update: targets, loss, gradients, SGD or
Adam, EMA, metrics, and float16's loss scale.

Everything a resumed run needs to continue exactly is in `TrainState`,
including the running sums of the logged metrics, so a run restarted from a
checkpoint logs the same numbers an uninterrupted run would. Weights are flat
vectors (see `optim.ParamLayout`); `layout.variables(...)` gives the model's
pytrees back.
"""
from typing import Dict

import flax
import jax
import jax.numpy as jnp
import ml_collections

from effdet_jax.detection import anchors as anchors_lib
from effdet_jax.detection import losses, target_assigner
from effdet_jax.models import build_model, image_hw
from effdet_jax.runtime import parallel, precision
from effdet_jax.training import loss_scale as loss_scale_lib, optim

METRICS = ('loss', 'det_loss', 'cls_loss', 'box_loss', 'l2_loss', 'learning_rate', 'grad_norm',
           'num_positives')


def metric_names(config: ml_collections.ConfigDict):
  """What the train step sums for the log: METRICS, and `box_iou_loss` with an
  IoU-family box loss."""
  return METRICS + (('box_iou_loss',) if config.loss.iou_loss_type else ())


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: jnp.ndarray            # [P] float32 (float64 for a float64 run)
  momentum: jnp.ndarray          # [P] SGD's momentum, or Adam's first moment
  second_moment: jnp.ndarray     # [P] Adam's; a scalar 0 for SGD (orbax saves no empty array)
  batch_stats: jnp.ndarray       # [S] BatchNorm moving means and variances
  ema_params: jnp.ndarray
  ema_batch_stats: jnp.ndarray
  metric_sums: Dict[str, jnp.ndarray]   # since the last logged step
  metric_count: jnp.ndarray
  first_nonfinite_step: jnp.ndarray     # -1 while every loss has been finite
  skipped_steps: jnp.ndarray
  loss_scale: Dict[str, jnp.ndarray]    # float16's (`loss_scale.initial`); {} otherwise


def batch_spec(config: ml_collections.ConfigDict, batch_size: int) -> Dict[str, jax.ShapeDtypeStruct]:
  """The device batch the step takes (what `input_pipeline.train_data` yields)."""
  height, width = image_hw(config)
  m = config.data.max_instances_per_image
  return {'image': jax.ShapeDtypeStruct((batch_size, height, width, 3), jnp.dtype(config.model.dtype)),
          'boxes': jax.ShapeDtypeStruct((batch_size, m, 4), jnp.float32),
          'classes': jax.ShapeDtypeStruct((batch_size, m), jnp.int32),
          'image_valid': jax.ShapeDtypeStruct((batch_size,), jnp.bool_)}


def bookkeeping(config: ml_collections.ConfigDict, dtype) -> Dict:
  """The state's entries that do not depend on the weights, as a fresh run has
  them: what `metric_names` sums (in `dtype`, the weights'), the counters, the
  loss scale. A checkpoint written before one of them existed resumes with it
  fresh (`checkpoint.TrainCheckpoints.restore`)."""
  return {'metric_sums': {k: jnp.zeros([], dtype) for k in metric_names(config)},
          'metric_count': jnp.zeros([], jnp.int32),
          'first_nonfinite_step': jnp.full([], -1, jnp.int32),
          'skipped_steps': jnp.zeros([], jnp.int32),
          'loss_scale': (loss_scale_lib.initial(config.train)
                         if precision.scales_loss(config.model.dtype) else {})}


def create_state(variables, layout: optim.ParamLayout, config: ml_collections.ConfigDict
                 ) -> TrainState:
  """A fresh state: the optimizer's slots as `train.optimizer` has them."""
  params, batch_stats = layout.flatten(variables)
  adam = optim.check_optimizer(config.train.optimizer) == 'adam'
  return TrainState(
      step=jnp.zeros([], jnp.int32), params=params, momentum=jnp.zeros_like(params),
      second_moment=jnp.zeros(params.shape if adam else (), params.dtype),
      batch_stats=batch_stats, ema_params=params, ema_batch_stats=batch_stats,
      **bookkeeping(config, layout.dtype))


def make_train_step(config: ml_collections.ConfigDict, layout: optim.ParamLayout, schedule):
  """`(state, batch, segments) -> state`; batch: `image`, `boxes`, `classes`,
  `image_valid`; segments: `layout.segment_ids()` (on the devices, replicated)."""
  model = build_model(config)
  m, loss_cfg, train = config.model, config.loss, config.train
  anchors = jnp.asarray(anchors_lib.anchors_for(config))
  level_shapes = anchors_lib.feature_sizes(image_hw(config), m.max_level)[m.min_level:]
  num_anchors = m.num_scales * len(m.aspect_ratios)
  base_rng = jax.random.PRNGKey(config.seed)
  path = optim.check_official_path(train.official_path)
  adam = optim.check_optimizer(train.optimizer) == 'adam'
  beta_1, epsilon = optim.adam_hyperparameters(train.momentum, path)
  l2_tensors = optim.l2_per_tensor(layout, path)
  scaling = precision.scales_loss(m.dtype)

  def loss_fn(params, batch_stats, batch, rng, segments, scale):
    (cls_outputs, box_outputs), updated = model.apply(
        layout.variables(params, batch_stats), batch['image'], train=True,
        mutable=['batch_stats'], rngs={'dropout': rng})
    cls_targets, box_targets, num_positives = target_assigner.batch_targets(
        anchors, batch['boxes'], batch['classes'], batch['image_valid'], level_shapes, num_anchors)
    det = losses.detection_loss(
        cls_outputs, box_outputs, cls_targets, box_targets, num_positives, m.num_classes,
        alpha=loss_cfg.alpha, gamma=loss_cfg.gamma, delta=loss_cfg.delta,
        box_loss_weight=loss_cfg.box_loss_weight, label_smoothing=loss_cfg.label_smoothing,
        iou_loss_type=loss_cfg.iou_loss_type, iou_loss_weight=loss_cfg.iou_loss_weight,
        iou_official_anchor_order=loss_cfg.iou_official_anchor_order,
        anchors=anchors)
    l2 = optim.l2_loss(params, layout.per_element(l2_tensors, segments), train.weight_decay)
    aux = {'det_loss': det['loss'], 'cls_loss': det['cls_loss'], 'box_loss': det['box_loss'],
           'l2_loss': l2, 'num_positives': jnp.mean(num_positives),
           'batch_stats': layout.flatten_stats(updated['batch_stats'])}
    if 'box_iou_loss' in det:
      aux['box_iou_loss'] = det['box_iou_loss']
    aux['loss'] = det['loss'] + l2
    return (aux['loss'] * scale if scaling else aux['loss']), aux

  def train_step(state: TrainState, batch, segments) -> TrainState:
    rng = jax.random.fold_in(base_rng, state.step)
    scale = state.loss_scale['scale'] if scaling else None
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, rng, segments, scale)
    if scaling:    # as Keras' get_unscaled_gradients, before clipping
      grads = grads * (1.0 / scale)
    loss, batch_stats = aux.pop('loss'), aux.pop('batch_stats')
    if layout.frozen_tensors:
      grads = grads * layout.per_element(layout.tensor_trainable, segments)
    grad_norm = jnp.sqrt(jnp.sum(jnp.square(grads)))
    if train.clip_gradients_norm > 0:
      grads = optim.clip_gradients(grads, segments, layout, train.clip_gradients_norm)
    # A non-finite step changes no weight: 'skip' goes on, 'stop' ends the run on the
    # host. float16's overflows are neither: they shrink the loss scale and go on.
    loss_finite, grads_finite = jnp.isfinite(loss), jnp.isfinite(grad_norm)
    finite = loss_finite & grads_finite
    nonfinite = ~finite
    loss_scale = state.loss_scale
    if scaling:
      nonfinite = nonfinite & ~loss_scale_lib.overflowed(loss_scale, loss_finite, grads_finite)
      loss_scale = loss_scale_lib.update(loss_scale, loss_finite, grads_finite,
                                         train.loss_scale_growth_steps)
    learning_rate = schedule(state.step)
    decay = optim.ema_decay(train.ema_decay, state.step, path)
    step_size = optim.adam_step_size(learning_rate, state.step, beta_1) if adam else learning_rate
    # The scalars are settled (computed once, into one small array the barrier
    # keeps XLA from folding away) before the per-parameter updates: XLA:CPU
    # otherwise fused their arithmetic (the cosine, the loss sum) into each update
    # loop and evaluated it for every element (demo model, 600k parameters: the
    # three updates took 10.8 ms per step, now 2.0 ms).
    settled = jax.lax.optimization_barrier(jnp.stack([finite.astype(jnp.float32), learning_rate,
                                                      decay, step_size]))
    finite, learning_rate, decay, step_size = settled[0] > 0, settled[1], settled[2], settled[3]
    second_moment = state.second_moment
    if adam:
      params, momentum, second_moment = optim.adam(state.params, state.momentum, second_moment,
                                                   grads, step_size, beta_1, epsilon)
    else:
      params, momentum = optim.sgd_momentum(state.params, state.momentum, grads, learning_rate,
                                            train.momentum, path)
    ema_params, ema_batch_stats = params, batch_stats
    if train.ema_decay > 0:
      ema_params = optim.ema_update(state.ema_params, params, decay, path)
      # TF1 averages the BatchNorm statistics too; TF2 averages trained variables only.
      if path == 'tf1':
        ema_batch_stats = optim.ema_update(state.ema_batch_stats, batch_stats, decay, path)
    keep = lambda new, old: jnp.where(finite, new, old)
    metrics = dict(aux, loss=loss, learning_rate=learning_rate, grad_norm=grad_norm)
    fresh = state.step % train.log_every_steps == 0
    sums = {k: jnp.where(fresh, 0.0, state.metric_sums[k]) + jnp.where(finite, metrics[k], 0.0)
            for k in state.metric_sums}
    return state.replace(
        step=state.step + 1, params=keep(params, state.params),
        momentum=keep(momentum, state.momentum),
        second_moment=keep(second_moment, state.second_moment),
        batch_stats=keep(batch_stats, state.batch_stats),
        ema_params=keep(ema_params, state.ema_params),
        ema_batch_stats=keep(ema_batch_stats, state.ema_batch_stats),
        metric_sums=sums,
        metric_count=jnp.where(fresh, 0, state.metric_count) + finite.astype(jnp.int32),
        first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & nonfinite, state.step,
                                       state.first_nonfinite_step),
        skipped_steps=state.skipped_steps + nonfinite.astype(jnp.int32),
        loss_scale=loss_scale)

  return train_step


def jit_train_step(config: ml_collections.ConfigDict, layout: optim.ParamLayout, schedule,
                   mesh: jax.sharding.Mesh):
  """The step as training runs it: the state replicated over the mesh and donated,
  the batch split over `data`."""
  replicated = parallel.replicated(mesh)
  return jax.jit(make_train_step(config, layout, schedule),
                 in_shardings=(replicated, parallel.batch_sharding(mesh), replicated),
                 out_shardings=replicated, donate_argnums=0)
