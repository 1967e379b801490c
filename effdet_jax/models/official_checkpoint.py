"""Official automl EfficientDet / EfficientNet checkpoints -> Flax variables.

The Flax tree mirrors the official Keras names, so conversion is a renaming:
the backbone scope `backbone` <-> `efficientnet-bN`, BatchNorm `scale`/`bias`/
`mean`/`var` <-> `gamma`/`beta`/`moving_mean`/`moving_variance`. Nothing is
guessed: every model variable must be found with its shape and every
checkpoint variable used, else the error lists what is missing, unexpected or
mis-shaped (a few names of each) and which size the checkpoint holds.

`python -m effdet_jax.tools.convert` writes the result as a converted directory;
`official_variables` is the way back (export to the official layout).
"""
import glob
import os
import re
import tarfile
import tempfile
from typing import Dict, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from effdet_jax.configs import efficientdet as model_configs
from effdet_jax.models.variables import abstract_variables, init_variables

EMA_SUFFIX = '/ExponentialMovingAverage'
CLASS_PREDICT = 'class_net/class-predict/'
_BN_NAMES = {'scale': 'gamma', 'bias': 'beta', 'mean': 'moving_mean', 'var': 'moving_variance'}
# Checkpoint entries that are not model weights.
_NOT_WEIGHTS = re.compile(r'(^global_step$|/Momentum$|/momentum$|/RMSProp(_1)?$|/Adam(_1)?$'
                          r'|^beta[12]_power$|^_CHECKPOINTABLE_OBJECT_GRAPH$|^Variable$)')


class CheckpointMismatchError(ValueError):
  """The checkpoint and the model disagree; the message lists every difference."""


def resolve_checkpoint(path: str) -> str:
  """The checkpoint prefix for a directory, a prefix, or a released `.tar.gz`."""
  if path.endswith(('.tar.gz', '.tgz', '.tar')):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'checkpoint archive {path!r} does not exist')
    target = tempfile.mkdtemp(prefix='effdet_ckpt_')
    with tarfile.open(path) as tar:
      tar.extractall(target, filter='data')
    path = target
  if os.path.isdir(path):
    return _prefix_in_directory(path)
  if os.path.exists(path + '.index'):
    return path
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'checkpoint {path} does not exist; expected an official TF checkpoint: a directory '
        f'with a `checkpoint` file, a prefix with a `.index` file beside it, or a released '
        f'.tar.gz / .tgz')
  raise FileNotFoundError(
      f'{path!r} is not a TF checkpoint: expected a directory with a `checkpoint` file, '
      f'a prefix with a `.index` file beside it, or a `.tar.gz` of one')


def _prefix_in_directory(directory: str) -> str:
  # TF only reads checkpoints here; importing it takes seconds, so the models
  # package does not pay for it unless a checkpoint is read.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for root, _, files in sorted(os.walk(directory)):
    if 'checkpoint' in files:
      prefix = tf.train.latest_checkpoint(root)
      if prefix:
        return prefix
  indexes = sorted(glob.glob(os.path.join(directory, '**', '*.index'), recursive=True))
  if len(indexes) == 1:
    return indexes[0][:-len('.index')]
  raise FileNotFoundError(
      f'no TF checkpoint in {directory!r}: expected one `checkpoint` file or exactly one '
      f'`*.index` file, found {len(indexes)} index files')


def read_checkpoint(prefix: str) -> Dict[str, np.ndarray]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (see _prefix_in_directory)
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def official_name(collection: str, path: Tuple[str, ...], backbone: str) -> str:
  """The checkpoint name of one Flax leaf, e.g.
  ('params', ('backbone', 'stem', 'tpu_batch_normalization', 'scale')) ->
  'efficientnet-b0/stem/tpu_batch_normalization/gamma'."""
  *scopes, leaf = path
  if scopes and scopes[0] == 'backbone':
    scopes[0] = backbone
  is_bn = collection == 'batch_stats' or (leaf in ('scale', 'bias') and _is_bn_scope(scopes))
  return '/'.join(scopes + [_BN_NAMES[leaf] if is_bn else leaf])


def _is_bn_scope(scopes) -> bool:
  name = scopes[-1]
  return name == 'bn' or 'batch_normalization' in name or re.search(r'-bn-\d+$', name) is not None


def _flatten(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict) or hasattr(value, 'items'):
      yield from _flatten(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def _unflatten(items):
  tree = {}
  for path, value in items:
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def load_official_checkpoint(path: str, config: ml_collections.ConfigDict, *,
                             use_ema: Optional[bool] = None,
                             reinit_class_head: bool = False,
                             backbone_only: bool = False,
                             rng: Optional[jax.Array] = None):
  """Variables (`{'params', 'batch_stats'}`) for `model.apply` from an official checkpoint.

  Args:
    path: checkpoint directory, prefix, or released `.tar.gz`.
    config: the full config; its `model` section must describe the checkpoint.
    use_ema: None takes the exponential-moving-average weights when the
      checkpoint has them; True requires them; False takes the raw weights.
    reinit_class_head: fine-tuning to another `num_classes`: the class
      predictor (`class_net/class-predict`) is freshly initialized, every other
      variable comes from the checkpoint.
    backbone_only: the checkpoint is an EfficientNet (ImageNet) one: only the
      backbone is loaded, everything else is freshly initialized; the
      classifier head of the checkpoint is left unused.
    rng: for the freshly initialized parts (default: PRNGKey(0)).
  """
  prefix = resolve_checkpoint(path)
  ckpt = read_checkpoint(prefix)
  backbone = config.model.backbone
  has_ema = any(name.endswith(EMA_SUFFIX) for name in ckpt)
  if use_ema and not has_ema:
    raise CheckpointMismatchError(f'{prefix}: use_ema=True but the checkpoint has no '
                                  f'`*{EMA_SUFFIX}` variables')
  ema = has_ema if use_ema is None else use_ema
  logging.info('Loading %s weights from %s', 'EMA' if ema else 'raw (non-EMA)', prefix)

  def fresh(name: str) -> bool:
    if backbone_only:
      return not name.startswith(backbone + '/')
    return reinit_class_head and name.startswith(CLASS_PREDICT)

  shapes = abstract_variables(config)
  fresh_vars = None
  if backbone_only or reinit_class_head:
    fresh_vars = init_variables(config, rng if rng is not None else jax.random.PRNGKey(0))
  missing, mismatched, used = [], [], set()
  out = {}
  for collection in ('params', 'batch_stats'):
    items = []
    for path, abstract in _flatten(shapes[collection]):
      name = official_name(collection, path, backbone)
      if fresh(name):
        value = _lookup(fresh_vars[collection], path)
        items.append((path, jnp.asarray(value)))
        continue
      key = name + EMA_SUFFIX if ema else name
      if key not in ckpt:
        missing.append(key)
        continue
      used.add(key)
      value = ckpt[key]
      if tuple(value.shape) != tuple(abstract.shape):
        mismatched.append(f'{key}: checkpoint {list(value.shape)}, model {list(abstract.shape)}')
        continue
      items.append((path, jnp.asarray(value, abstract.dtype)))
    out[collection] = _unflatten(items)

  unexpected = sorted(name for name in ckpt if name not in used and not _ignorable(
      name, ema, backbone, backbone_only, reinit_class_head))
  if missing or mismatched or unexpected:
    raise CheckpointMismatchError(mismatch_message(prefix, ckpt, config, missing, mismatched,
                                                   unexpected))
  logging.info('Loaded %d variables from %s', len(used), prefix)
  return out


def mismatch_message(prefix: str, ckpt: Dict[str, np.ndarray], config: ml_collections.ConfigDict,
                     missing, mismatched, unexpected, examples: int = 5) -> str:
  """The lists of differences (a few names each) and, last, what the checkpoint
  holds against what the config asks for."""
  lines = []
  for title, names in (('missing from the checkpoint', missing),
                       ('shape mismatch', mismatched),
                       ('unexpected in the checkpoint (not used by the model)', unexpected)):
    if names:
      more = f', ... and {len(names) - examples} more' if len(names) > examples else ''
      lines.append(f'  {title} ({len(names)}): {", ".join(names[:examples])}{more}')
  guess = guess_model(ckpt)
  held = f'{guess} (guessed from its names and shapes)' if guess else 'no EfficientDet size known here'
  lines.append(f'checkpoint {prefix} holds {held}; the config is {config.model.name}')
  return '\n'.join(lines)


def guess_model(ckpt: Dict[str, np.ndarray]) -> str:
  """'efficientdet-d3' (or 'efficientdet-d6 or efficientdet-d7', which share every
  weight) for a checkpoint's tensors, from its backbone, BiFPN and head sizes; ''
  when no official size fits."""
  names = {n[:-len(EMA_SUFFIX)] if n.endswith(EMA_SUFFIX) else n: v for n, v in ckpt.items()}
  backbones = {n.split('/')[0] for n in names if n.startswith('efficientnet-')}
  head_bias = names.get('class_net/class-0/bias')
  if len(backbones) != 1 or head_bias is None:
    return ''
  held = (backbones.pop(), int(np.shape(head_bias)[-1]),
          len({m.group(1) for n in names for m in [re.match(r'fpn_cells/cell_(\d+)/', n)] if m}),
          len({m.group(1) for n in names for m in [re.match(r'class_net/class-(\d+)/', n)] if m}))
  fits = []
  for name in model_configs.MODEL_NAMES:
    m = model_configs.model_config(name)
    if (m.backbone, m.fpn_num_filters, m.fpn_cell_repeats, m.box_class_repeats) == held:
      fits.append(m.name)
  return ' or '.join(fits)


def official_variables(variables, config: ml_collections.ConfigDict) -> Dict[str, np.ndarray]:
  """`{'params', 'batch_stats'}` -> `{official checkpoint name: array}`: the inverse
  of `load_official_checkpoint` (export to the official layout, comparisons)."""
  named = {}
  for collection in ('params', 'batch_stats'):
    for path, value in _flatten(variables.get(collection, {})):
      named[official_name(collection, path, config.model.backbone)] = np.asarray(value)
  return named


def _lookup(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _ignorable(name: str, ema: bool, backbone: str, backbone_only: bool,
               reinit_class_head: bool) -> bool:
  if _NOT_WEIGHTS.search(name):
    return True
  is_ema = name.endswith(EMA_SUFFIX)
  if is_ema != ema:       # the other weight set
    return True
  base = name[:-len(EMA_SUFFIX)] if is_ema else name
  if _NOT_WEIGHTS.search(base):
    return True
  if backbone_only:
    # The ImageNet classifier (`head/`) and anything outside the backbone.
    return not base.startswith(backbone + '/') or base.startswith(backbone + '/head/')
  return reinit_class_head and base.startswith(CLASS_PREDICT)
