"""Evaluating a run: the EMA weights of a train state for the periodic
evaluation, and `--mode eval` (one checkpoint scored, its metrics written into
the workdir beside the training's)."""
import logging
import os
from typing import Tuple

import jax
import ml_collections
import tensorflow as tf

from effdet_jax.data import categories as categories_lib
from effdet_jax.inference import evaluate
from effdet_jax.runtime import parallel
from effdet_jax.training import optim, weights
from effdet_jax.training.metrics_writer import create_writer


def ema_variables(state, layout: optim.ParamLayout, mesh):
  """The EMA weights of a train state as model variables, replicated over the mesh."""
  return jax.jit(layout.variables, out_shardings=parallel.replicated(mesh))(
      state.ema_params, state.ema_batch_stats)


def load_variables(config: ml_collections.ConfigDict, workdir: str, path: str, mesh):
  """(step, replicated variables): what `path` holds (the EMA weights where it has
  two sets), or without `path` the EMA weights of the latest training checkpoint
  of `workdir`."""
  loaded = (weights.load_weights(path, config) if path
            else weights.load_workdir(workdir, config))
  return loaded.step, parallel.replicate(loaded.variables, mesh)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        path: str = '') -> Tuple[int, evaluate.EvalResult]:
  """`--mode eval`: score one checkpoint and write the results into `workdir`; (its step, result)."""
  mesh = parallel.create_mesh(config.model_parallelism)
  step, variables = load_variables(config, workdir, path, mesh)
  logging.info('evaluating %s at step %d', path or workdir, step)
  evaluator = evaluate.Evaluator(config, mesh)
  if jax.process_index() == 0:
    tf.io.gfile.makedirs(workdir)
    evaluator.data.categories.save(os.path.join(workdir, categories_lib.FILENAME))
  writer = create_writer(workdir, resume_step=None)
  try:
    result = evaluator(variables)
    evaluate.write(result, step, workdir, writer)
  finally:
    writer.close()
  return step, result
