"""Official checkpoints load by name and give the official outputs."""
import os
import re
import tarfile

import jax
import numpy as np
import pytest

from effdet_jax.configs.efficientdet import get_config
from effdet_jax.models import build_model, inference
from effdet_jax.models import official_checkpoint as official
from effdet_jax.models.variables import abstract_variables
from effdet_jax.training import checkpoint, weights
from conftest import require_parity

CLASS_SUBSET = [0, 1, 2, 17, 45, 89]


@pytest.fixture(scope='module')
def parity():
  return require_parity()


@pytest.fixture(scope='module')
def ckpt_tensors(parity):
  return official.read_checkpoint(os.path.join(parity, 'ckpt', 'model'))


@pytest.fixture(scope='module')
def d0_variables(parity):
  return official.load_official_checkpoint(os.path.join(parity, 'ckpt'), get_config('d0'))


@pytest.fixture(scope='module')
def d0_forward():
  model = build_model(get_config('d0'))
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


def normalized_input(parity):
  config = get_config('d0').model
  images = np.load(os.path.join(parity, 'input.npy')).astype(np.float32)
  return (images - np.float32(config.mean_rgb)) / np.float32(config.stddev_rgb)


def max_abs_errors(outputs, ref):
  """Per image and level: max |ours - official| over class logits (subset) and boxes."""
  class_outputs, box_outputs = outputs
  errors = np.zeros((2, len(box_outputs)))
  for i, level in enumerate(range(3, 8)):
    cls = np.asarray(class_outputs[i]).reshape(*class_outputs[i].shape[:3], 9, 90)
    cls_err = np.abs(cls[..., CLASS_SUBSET] - ref[f'class_{level}']).reshape(2, -1).max(1)
    box_err = np.abs(np.asarray(box_outputs[i]) - ref[f'box_{level}']).reshape(2, -1).max(1)
    errors[:, i] = np.maximum(cls_err, box_err)
  return errors


def test_official_d0_outputs(parity, d0_variables, d0_forward):
  """Every level of the official EMA outputs.

  The second photo matches to ~2e-6. The first is ill-conditioned (random
  weights with perturbed BN statistics amplify float32 rounding ~250x): there
  the official TF output itself is ~1.5e-3 from the float64 result, because
  TF's float32 reduce_mean (squeeze-excite) rounds ~25x more than XLA's and
  in a thread-count dependent order (TF 2.21 on this machine and the TF 2.15
  reference differ by 3e-4 on it). Our float32 output is 3e-4 from float64.
  """
  ref = np.load(os.path.join(parity, 'ref_outputs.npz'))
  errors = max_abs_errors(d0_forward(d0_variables, normalized_input(parity)), ref)
  assert errors[1].max() < 1e-3, errors
  assert errors[0].max() < 2.5e-3, errors


def test_cpu_inference_compiler_options_keep_the_outputs(parity, d0_variables, d0_forward):
  """The inference step's XLA options (fast math on CPU) against the exact compile."""
  fast = jax.jit(d0_forward, compiler_options=inference.compiler_options())
  exact = d0_forward(d0_variables, normalized_input(parity))
  outputs = fast(d0_variables, normalized_input(parity))
  pairs = list(zip(jax.tree_util.tree_leaves(outputs), jax.tree_util.tree_leaves(exact)))
  if inference.compiler_options():   # they reach the compiler: the rounding differs
    assert any(not np.array_equal(ours, reference) for ours, reference in pairs)
  for ours, reference in pairs:
    np.testing.assert_allclose(ours[1], reference[1], atol=2e-5)   # the well-conditioned image
  ref = np.load(os.path.join(parity, 'ref_outputs.npz'))
  errors = max_abs_errors(outputs, ref)
  assert errors[1].max() < 1e-3, errors
  assert errors[0].max() < 2.5e-3, errors


def test_ema_is_chosen_and_raw_differs(parity, d0_variables, d0_forward):
  ref = np.load(os.path.join(parity, 'ref_outputs.npz'))
  raw = official.load_official_checkpoint(os.path.join(parity, 'ckpt'), get_config('d0'),
                                         use_ema=False)
  assert max_abs_errors(d0_forward(raw, normalized_input(parity)), ref).min() > 1e-2
  emas = official.load_official_checkpoint(os.path.join(parity, 'ckpt'), get_config('d0'),
                                          use_ema=True)
  jax.tree_util.tree_map(np.testing.assert_array_equal, emas, d0_variables)


def test_names_map_onto_the_official_ones(ckpt_tensors, d0_variables):
  stem = d0_variables['params']['backbone']['stem']['tpu_batch_normalization']['scale']
  np.testing.assert_array_equal(
      stem, ckpt_tensors['efficientnet-b0/stem/tpu_batch_normalization/gamma'
                         '/ExponentialMovingAverage'])
  var = d0_variables['batch_stats']['fpn_cells']['cell_0']['fnode1']['resample_0_2_6']['bn']['var']
  np.testing.assert_array_equal(
      var, ckpt_tensors['fpn_cells/cell_0/fnode1/resample_0_2_6/bn/moving_variance'
                        '/ExponentialMovingAverage'])


def write_checkpoint(prefix, tensors):
  import tensorflow as tf
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  return prefix


def test_prefix_directory_and_archive_are_accepted(parity, tmp_path, ckpt_tensors):
  ckpt_dir = os.path.join(parity, 'ckpt')
  assert official.resolve_checkpoint(ckpt_dir) == os.path.join(ckpt_dir, 'model')
  assert official.resolve_checkpoint(os.path.join(ckpt_dir, 'model')).endswith('model')
  archive = tmp_path / 'efficientdet-d0.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(ckpt_dir, arcname='efficientdet-d0')
  prefix = official.resolve_checkpoint(str(archive))
  assert sorted(official.read_checkpoint(prefix)) == sorted(ckpt_tensors)
  with pytest.raises(FileNotFoundError, match='nothing does not exist; expected an official'):
    official.resolve_checkpoint(str(tmp_path / 'nothing'))
  (tmp_path / 'notes.txt').write_text('x')
  with pytest.raises(FileNotFoundError, match='not a TF checkpoint'):
    official.resolve_checkpoint(str(tmp_path / 'notes.txt'))


def test_mismatches_are_all_listed(tmp_path, ckpt_tensors):
  tensors = dict(ckpt_tensors)
  ema = official.EMA_SUFFIX
  del tensors['box_net/box-2/bias' + ema]
  tensors['class_net/class-1/bias' + ema] = np.zeros(3, np.float32)
  tensors['mystery/kernel' + ema] = np.zeros(2, np.float32)
  prefix = write_checkpoint(str(tmp_path / 'broken'), tensors)
  with pytest.raises(official.CheckpointMismatchError) as e:
    official.load_official_checkpoint(prefix, get_config('d0'))
  message = str(e.value)
  assert 'missing from the checkpoint (1): box_net/box-2/bias' + ema in message
  assert 'class_net/class-1/bias' + ema + ': checkpoint [3], model [64]' in message
  assert 'unexpected in the checkpoint' in message and 'mystery/kernel' + ema in message
  assert message.splitlines()[-1] == (f'checkpoint {prefix} holds efficientdet-d0 (guessed from '
                                      'its names and shapes); the config is efficientdet-d0')
  # A different size is refused the same way, never loaded half-way; each list
  # names five examples and counts the rest, and the summary comes last.
  with pytest.raises(official.CheckpointMismatchError) as e:
    official.load_official_checkpoint(os.path.dirname(prefix) + '/broken', get_config('d1'))
  *details, summary = str(e.value).splitlines()
  assert summary.endswith('holds efficientdet-d0 (guessed from its names and shapes); '
                          'the config is efficientdet-d1')
  shapes = [l for l in details if l.startswith('  shape mismatch (')][0]
  assert shapes.count('checkpoint [') == 5 and re.search(r'\.\.\. and \d+ more$', shapes)


def test_the_size_is_guessed_from_the_names_and_shapes():
  def tensors(name):
    return {official.official_name(collection, path, get_config(name).model.backbone): np.zeros(a.shape)
            for collection in ('params', 'batch_stats')
            for path, a in official._flatten(abstract_variables(get_config(name))[collection])}
  assert official.guess_model(tensors('lite0')) == 'efficientdet-lite0'
  assert official.guess_model(tensors('d6')) == 'efficientdet-d6 or efficientdet-d7'
  assert official.guess_model({'mystery/kernel': np.zeros(2)}) == ''


def test_raw_only_checkpoint_and_use_ema_request(tmp_path, ckpt_tensors):
  raw = {k: v for k, v in ckpt_tensors.items() if not k.endswith(official.EMA_SUFFIX)}
  prefix = write_checkpoint(str(tmp_path / 'raw'), raw)
  variables = official.load_official_checkpoint(prefix, get_config('d0'))
  np.testing.assert_array_equal(
      variables['params']['class_net']['class-predict']['bias'],
      raw['class_net/class-predict/bias'])
  with pytest.raises(official.CheckpointMismatchError, match='use_ema=True'):
    official.load_official_checkpoint(prefix, get_config('d0'), use_ema=True)


def test_reinit_class_head_for_fine_tuning(parity, ckpt_tensors):
  config = get_config('d0')
  config.model.num_classes = 20
  variables = official.load_official_checkpoint(os.path.join(parity, 'ckpt'), config,
                                               reinit_class_head=True)
  predict = variables['params']['class_net']['class-predict']
  assert predict['pointwise_kernel'].shape == (1, 1, 64, 9 * 20)
  np.testing.assert_allclose(jax.nn.sigmoid(predict['bias']), 0.01, rtol=1e-5)
  np.testing.assert_array_equal(
      variables['params']['class_net']['class-0']['bias'],
      ckpt_tensors['class_net/class-0/bias' + official.EMA_SUFFIX])


def test_efficientnet_checkpoint_initializes_the_backbone(tmp_path, ckpt_tensors):
  # An ImageNet EfficientNet checkpoint: backbone names plus its classifier head.
  tensors = {k: v for k, v in ckpt_tensors.items() if k.startswith('efficientnet-b0/')}
  tensors['efficientnet-b0/head/dense/kernel'] = np.zeros((1280, 1000), np.float32)
  tensors['efficientnet-b0/head/conv2d/kernel'] = np.zeros((1, 1, 320, 1280), np.float32)
  tensors['global_step'] = np.int64(7)
  prefix = write_checkpoint(str(tmp_path / 'efficientnet-b0'), tensors)
  variables = official.load_official_checkpoint(prefix, get_config('d0'), backbone_only=True)
  np.testing.assert_array_equal(
      variables['params']['backbone']['blocks_3']['depthwise_conv2d']['depthwise_kernel'],
      tensors['efficientnet-b0/blocks_3/depthwise_conv2d/depthwise_kernel' + official.EMA_SUFFIX])
  assert variables['params']['box_net']['box-predict']['bias'].shape == (36,)


def test_converted_variables_round_trip_through_orbax(tmp_path, d0_variables):
  out = str(tmp_path / 'converted')
  checkpoint.save_variables(out, d0_variables, get_config('d0'))
  restored = weights.load_weights(out, get_config('d0')).variables
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, d0_variables)
  with pytest.raises(ValueError, match='does not fit efficientdet-d1'):
    checkpoint.restore_variables(out, get_config('d1'))
