"""Entry point: `python -m effdet_jax.main --config effdet_jax/configs/efficientdet.py:d0 --workdir DIR`.

Multi-host: on a TPU pod every worker runs the same command, and under SLURM
every task of an `srun` with several tasks; `jax.distributed.initialize()`
finds the others from the environment. Elsewhere (several processes on one
machine, other clusters) pass `--coordinator_address`, `--num_processes` and
`--process_id`. `launch/` starts all of these.
"""
import os
import time

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from effdet_jax.runtime import cli, precision

FLAGS = flags.FLAGS
MODES = ('train', 'eval', 'train_and_eval')


def initialize_distributed():
  if FLAGS.coordinator_address:
    if FLAGS.cpu_collectives:
      jax.config.update('jax_cpu_collectives_implementation', FLAGS.cpu_collectives)
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif cluster_from_environment():
    jax.distributed.initialize()


def cluster_from_environment() -> str:
  """'tpu_pod' or 'slurm' where the environment describes several processes
  that `jax.distributed.initialize()` can find by itself, else ''."""
  env = os.environ
  if len(env.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1:   # a multi-host TPU VM slice
    return 'tpu_pod'
  if int(env.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_STEP_NODELIST' in env:  # inside srun
    return 'slurm'
  return ''


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  initialize_distributed()
  # TF is only the input pipeline here: keep it off any accelerator.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  # The library after jax.distributed.initialize (nothing may use the devices
  # before it) and with TF kept off the GPU.
  from effdet_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from effdet_jax.training import evaluation, train  # pylint: disable=g-import-not-at-top
  logging.info('process %d of %d, %d local / %d global devices (%s)', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.default_backend())
  config = synthetic.resolve(FLAGS.config, FLAGS.workdir)
  precision.configure(config)
  if FLAGS.mode == 'eval':
    step, result = evaluation.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.checkpoint)
    _summary(result.metrics, step, FLAGS.checkpoint)
    return
  if FLAGS.checkpoint:
    raise app.UsageError('--checkpoint is for --mode eval; to start training from a checkpoint '
                         'set --config.train.init_checkpoint')
  start = time.time()
  result = train.train(config, FLAGS.workdir, stop_at_step=FLAGS.stop_at_step or None,
                       with_eval=FLAGS.mode == 'train_and_eval')
  if result.preempted:
    logging.info('stopped at step %d by preemption; checkpoint saved', result.step)
    return
  logging.info('done: step %d of %d in %.1f min; checkpoints in %s/checkpoints', result.step,
               result.total_steps, (time.time() - start) / 60, FLAGS.workdir)
  _summary(result.eval_metrics, result.step)


def _summary(metrics, step, checkpoint=''):
  """The last lines a user reads: the score and where things are."""
  if jax.process_index() != 0 or not metrics:
    return
  from effdet_jax.inference import evaluate  # pylint: disable=g-import-not-at-top  (see main)
  lines = [f"AP {metrics['AP']:.3f}  AP50 {metrics['AP50']:.3f}  AP75 {metrics['AP75']:.3f}  "
           f"AR100 {metrics['AR100']:.3f}"]
  lines.append(f'checkpoint: {checkpoint or os.path.join(FLAGS.workdir, "checkpoints", str(step))}')
  picture = evaluate.samples_path(FLAGS.workdir, step)
  if os.path.exists(picture):
    lines.append(f'predictions on validation images: {picture}')
  lines.append(f'metrics: {os.path.join(FLAGS.workdir, "metrics.jsonl")}')
  print('\n'.join(lines), flush=True)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'e.g. effdet_jax/configs/efficientdet.py:d0',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'checkpoints, metrics.jsonl, TensorBoard (may be gs://)')
  flags.DEFINE_enum('mode', 'train', MODES, 'train; eval (one checkpoint, COCO mAP); or '
                    'train_and_eval (every config.train.eval_every_steps and at the end)')
  flags.DEFINE_string('checkpoint', '', '--mode eval: a training workdir or step directory, a '
                      'converted or an official checkpoint (default: the latest in --workdir)')
  flags.DEFINE_string('coordinator_address', '', 'host:port of process 0 (not needed on TPU pods)')
  flags.DEFINE_integer('num_processes', 1, 'with --coordinator_address')
  flags.DEFINE_integer('process_id', 0, 'with --coordinator_address')
  flags.DEFINE_string('cpu_collectives', '', "CPU collectives for multi-process CPU runs: 'gloo'")
  flags.DEFINE_integer('stop_at_step', 0, 'end this run at this step (checkpointed) without '
                       'changing the schedule; 0: run to the end')
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
