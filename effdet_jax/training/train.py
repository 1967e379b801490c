"""The training loop: mesh, state (fresh, from an official checkpoint, or resumed),
the sharded step, logging, checkpoints and preemption.

Reads top to bottom: data -> schedule and optimizer -> state -> jitted step ->
loop. The state is replicated over the mesh and the batch split over its
`data` axis, so BatchNorm statistics are over the global batch (sync BN) and
the loss is normalized by the global number of positives: the result does not
depend on how many devices or hosts share the batch.
"""
import dataclasses
import logging
import os
import signal
import time
from typing import Dict, Optional

from clu import periodic_actions
import jax
import ml_collections
import tensorflow as tf

from effdet_jax.data import categories as categories_lib, input_pipeline
from effdet_jax.inference import evaluate, progress
from effdet_jax.models.variables import abstract_variables, init_variables
from effdet_jax.runtime import parallel, precision
from effdet_jax.training import checkpoint, evaluation, optim, weights
from effdet_jax.training.metrics_writer import TENSORBOARD_DIR, create_writer
from effdet_jax.training.step import METRICS, TrainState, bookkeeping, create_state, jit_train_step


class NonFiniteLossError(RuntimeError):
  pass


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  step: int
  total_steps: int
  preempted: bool
  eval_metrics: Dict[str, float]   # the last evaluation's (process 0; {} if none ran)


def initial_variables(config: ml_collections.ConfigDict):
  """Random weights, or those of `train.init_checkpoint` (any path `weights.load_weights`
  reads; an official one with a fresh class head for another `num_classes`, or
  only its backbone if asked)."""
  t = config.train
  rng = jax.random.PRNGKey(config.seed)
  if not t.init_checkpoint:
    return init_variables(config, rng)
  return weights.load_weights(
      t.init_checkpoint, config, what='--config.train.init_checkpoint:', rng=rng,
      backbone_only=t.init_backbone_only,
      reinit_class_head=config.model.num_classes != 90 and not t.init_backbone_only).variables


class _Preemption:
  """SIGTERM (what a preempted VM gets) asks for a checkpoint and a clean exit.
  With several processes JAX's coordination service sees the signal and all
  processes agree on the step to stop at, which orbax's checkpoint manager
  asks it for; a single process (no coordination service) catches the
  signal itself."""

  def __init__(self, ckpts: checkpoint.TrainCheckpoints):
    self.requested = False
    self.ckpts = ckpts
    self.multi = jax.process_count() > 1
    if not self.multi:
      self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if self.multi:
      return self.ckpts.manager.reached_preemption(step)
    return self.requested

  def close(self):
    if not self.multi:
      signal.signal(signal.SIGTERM, self.previous)


def _profiler(t: ml_collections.ConfigDict, workdir: str, start: int, end: int):
  """clu's `Profile` action for `train.profile_steps` steps after `train.profile_first_step`,
  or None (off, or those steps are not in this run)."""
  if not t.profile_steps:
    return None
  first, last = t.profile_first_step, t.profile_first_step + t.profile_steps
  if first <= start or last > end:
    logging.warning('no profile: steps %d-%d (train.profile_first_step, train.profile_steps) '
                    'are not all in this run (steps %d-%d)', first + 1, last, start + 1, end)
    return None
  logdir = os.path.join(workdir, TENSORBOARD_DIR)
  logging.info('profiling steps %d-%d into %s/plugins/profile', first + 1, last, logdir)
  return periodic_actions.Profile(logdir=logdir, num_profile_steps=t.profile_steps,
                                  profile_duration_ms=None, first_profile=first,
                                  every_secs=None)


def train(config: ml_collections.ConfigDict, workdir: str,
          stop_at_step: Optional[int] = None, with_eval: bool = False) -> TrainResult:
  """Train until `train.num_steps` (or epochs), resuming from `workdir` if it has a checkpoint.

  `stop_at_step` ends this run early (saving a checkpoint) without changing the schedule.
  `with_eval` evaluates the EMA weights every `train.eval_every_steps` and at the end.
  """
  precision.configure(config)
  mesh = parallel.create_mesh(config.model_parallelism)
  parallel.check_global_batch(config.train.global_batch_size, mesh)
  batch_sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)

  source = input_pipeline.open_source(config, 'train')
  examples = source.num_examples(0, 1)
  lengths = optim.schedule_lengths(config.train, examples)
  total_steps, warmup_steps = lengths.total, lengths.warmup
  schedule = optim.config_schedule(config.train, lengths)

  ckpts = checkpoint.TrainCheckpoints(workdir, config.train.keep_checkpoints)
  abstract_vars = abstract_variables(config)
  layout = optim.ParamLayout(abstract_vars, config.train.freeze_regex)
  abstract_state = checkpoint.abstract_like(
      jax.eval_shape(lambda v: create_state(v, layout, config), abstract_vars), replicated)
  latest = ckpts.latest_step()
  if latest is not None:
    logging.info('resuming from %s step %d', ckpts.directory, latest)
    state = ckpts.restore(abstract_state, latest, fresh=bookkeeping(config, layout.dtype))
  else:
    variables = parallel.replicate(initial_variables(config), mesh)
    state = jax.jit(lambda v: create_state(v, layout, config),
                    out_shardings=replicated)(variables)
  start = int(state.step)

  data = input_pipeline.train_data(config, start_step=start, source=source)
  if jax.process_index() == 0:
    tf.io.gfile.makedirs(workdir)
    data.categories.save(os.path.join(workdir, categories_lib.FILENAME))
    with tf.io.gfile.GFile(os.path.join(workdir, checkpoint.CONFIG_FILE), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info('%d steps of %d images (%d examples per epoch, warm-up %d steps) on %d devices '
               'in %d processes, from step %d', total_steps, config.train.global_batch_size,
               examples, warmup_steps, jax.device_count(), jax.process_count(), start)

  step_fn = jit_train_step(config, layout, schedule, mesh)
  segments = parallel.replicate(layout.segment_ids(), mesh)
  evaluator = evaluate.Evaluator(config, mesh) if with_eval else None
  eval_metrics = {}
  writer = create_writer(workdir, resume_step=start)
  preemption = _Preemption(ckpts)
  end = min(total_steps, stop_at_step) if stop_at_step else total_steps
  t = config.train
  profile = _profiler(t, workdir, start, end)
  bad_images: Dict[str, int] = {}
  bad_boxes: Dict[str, int] = {}
  step, preempted = start, False
  last_time, last_step = time.time(), start
  batches = parallel.prefetch_to_devices(data.dataset.as_numpy_iterator(), batch_sharding,
                                         input_pipeline.TRAIN_DEVICE_KEYS)
  try:
    while step < end:
      device_batch, host_batch = next(batches)
      state = step_fn(state, device_batch, segments)
      step += 1
      if profile:
        profile(step)
      images, boxes = input_pipeline.bad_data_counts(host_batch)
      for total, counts in ((bad_images, images), (bad_boxes, boxes)):
        for k, v in counts.items():
          total[k] = total.get(k, 0) + v
      preempted = preemption.reached(step) and step < end
      log_now = step % t.log_every_steps == 0 or step == end
      save_now = step % t.checkpoint_every_steps == 0 or step == end or preempted
      if log_now or save_now:
        _check_finite(state, t.on_nonfinite)
      if log_now:
        now = time.time()
        rate = (step - last_step) * t.global_batch_size / max(now - last_time, 1e-9)
        _log(writer, state, step, total_steps, rate, (now - last_time) / max(step - last_step, 1),
             bad_images, bad_boxes)
        last_time, last_step = now, step
      if save_now:
        ckpts.save(step, state)
      if evaluator and not preempted and (
          step == end or (t.eval_every_steps and step % t.eval_every_steps == 0)):
        result = evaluator(evaluation.ema_variables(state, layout, mesh))
        evaluate.write(result, step, workdir, writer)
        eval_metrics = result.metrics
      if preempted:
        logging.warning('preemption: saved step %d, exiting; run again with the same workdir '
                        'to resume', step)
        break
  finally:
    ckpts.wait()
    ckpts.close()
    writer.close()
    preemption.close()
  return TrainResult(state, step, total_steps, preempted, eval_metrics)


def _check_finite(state: TrainState, policy: str):
  bad = int(state.first_nonfinite_step)
  if bad < 0:
    return
  if policy == 'stop':
    raise NonFiniteLossError(
        f'the loss or its gradient was not finite at step {bad + 1} (no weight was changed by '
        f'that step); lower the learning rate, check the data, or set '
        f'config.train.on_nonfinite="skip"')
  if policy != 'skip':
    raise ValueError(f'config.train.on_nonfinite must be "stop" or "skip", got {policy!r}')


def _log(writer, state, step, total_steps, images_per_sec, step_time, bad_images, bad_boxes):
  sums, count, skipped, loss_scale = jax.device_get(
      (state.metric_sums, state.metric_count, state.skipped_steps, state.loss_scale))
  count = max(int(count), 1)
  names = METRICS + tuple(k for k in sums if k not in METRICS)   # box_iou_loss last
  scalars = {k: float(sums[k]) / count for k in names}
  scalars.update(images_per_sec=round(images_per_sec, 2), step_time_s=round(step_time, 4),
                 skipped_steps=int(skipped),
                 images_skipped=int(sum(bad_images.values())),
                 boxes_dropped=int(sum(bad_boxes.values())))
  if loss_scale:   # float16
    scalars.update(loss_scale=float(loss_scale['scale']),
                   overflow_steps=int(loss_scale['overflow_steps']))
  writer.write_scalars(step, scalars)
  writer.flush()
  eta = (total_steps - step) * step_time
  logging.info('step %d/%d (%.0f%%) loss %.4f (cls %.4f box %.5f l2 %.4f) lr %.4g |grad| %.3g%s '
               '%.1f img/s %.3f s/step ETA %s%s', step, total_steps, 100 * step / total_steps,
               scalars['loss'], scalars['cls_loss'], scalars['box_loss'], scalars['l2_loss'],
               scalars['learning_rate'], scalars['grad_norm'],
               f" loss scale {scalars['loss_scale']:g} ({scalars['overflow_steps']} overflows)"
               if loss_scale else '', images_per_sec, step_time, progress.format_eta(eta),
               f' (bad data so far: images {bad_images}, boxes {bad_boxes})'
               if any(bad_images.values()) or any(bad_boxes.values()) else '')
