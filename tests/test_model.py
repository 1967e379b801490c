"""Model structure, outputs and options on a small D0-shaped config."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effdet_jax.configs.efficientdet import get_config
from effdet_jax.models import bifpn, build_model


def tiny_config(**overrides):
  config = get_config('d0')
  m = config.model
  m.image_size = (128, 256)
  m.num_classes = 5
  m.fpn_num_filters = 16
  m.fpn_cell_repeats = 2
  m.box_class_repeats = 2
  for key, value in overrides.items():
    m[key] = value
  return config


def run(config, images, train=False, variables=None):
  model = build_model(config)
  if variables is None:
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(images)
  if train:
    fn = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                          rngs={'dropout': jax.random.PRNGKey(2)}))
  else:
    fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return variables, fn(variables, images)


@pytest.fixture(scope='module')
def images():
  return jax.random.normal(jax.random.PRNGKey(1), (2, 128, 256, 3))


@pytest.fixture(scope='module')
def reference(images):
  return run(tiny_config(conv_impl='native'), images)


def test_outputs_per_level_with_official_layouts(reference):
  _, (class_outputs, box_outputs) = reference
  assert len(class_outputs) == len(box_outputs) == 5
  for i, level in enumerate(range(3, 8)):
    stride = 2 ** level
    assert class_outputs[i].shape == (2, 128 // stride, 256 // stride, 9 * 5)
    assert box_outputs[i].shape == (2, 128 // stride, 256 // stride, 9 * 4)


def test_class_bias_starts_at_prior_probability(reference):
  variables, _ = reference
  bias = variables['params']['class_net']['class-predict']['bias']
  np.testing.assert_allclose(jax.nn.sigmoid(bias), 0.01, rtol=1e-5)


def test_cpu_formulation_matches_native_convolutions(images, reference):
  variables, (cls_native, box_native) = reference
  _, (cls_fast, box_fast) = run(tiny_config(conv_impl='matmul'), images, variables=variables)
  for a, b in zip(cls_native + box_native, cls_fast + box_fast):
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)


def test_fusion_methods(images, reference):
  variables, (cls_fast, _) = reference
  # Fusion weights: one scalar per input edge, named as the official WSM, WSM_1, ...
  fnode = variables['params']['fpn_cells']['cell_0']['fnode4']
  assert sorted(k for k in fnode if k.startswith('WSM')) == ['WSM', 'WSM_1', 'WSM_2']
  _, (cls_attn, _) = run(tiny_config(conv_impl='native', fpn_weight_method='attn'), images,
                         variables=variables)
  sum_vars, (cls_sum, _) = run(tiny_config(conv_impl='native', fpn_weight_method='sum'), images)
  assert not any(k.startswith('WSM') for k in sum_vars['params']['fpn_cells']['cell_0']['fnode4'])
  # With all weights equal to one, softmax gives the mean and fast fusion almost the mean.
  for a, b in zip(cls_fast, cls_attn):
    np.testing.assert_allclose(a, b, atol=2e-3)
  with pytest.raises(ValueError, match='fpn_weight_method'):
    run(tiny_config(fpn_weight_method='max'), images)


def test_training_mode_updates_batch_stats_and_uses_dropout_rng(images, reference):
  variables, _ = reference
  config = tiny_config(conv_impl='native', backbone_survival_prob=0.8, head_survival_prob=0.8)
  _, ((cls, _), updates) = run(config, images, train=True, variables=variables)
  before = variables['batch_stats']['backbone']['stem']['tpu_batch_normalization']['mean']
  after = updates['batch_stats']['backbone']['stem']['tpu_batch_normalization']['mean']
  assert not np.allclose(before, after)
  assert all(np.isfinite(c).all() for c in cls)


def test_bfloat16_compute_keeps_float32_params(images, reference):
  variables, (cls32, _) = reference
  _, (cls16, _) = run(tiny_config(conv_impl='native', dtype='bfloat16'), images,
                      variables=variables)
  assert cls16[0].dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables['params']))
  for a, b in zip(cls32, cls16):
    np.testing.assert_allclose(np.asarray(b, np.float32), a, atol=0.25)


def test_bifpn_graph_is_the_official_one():
  assert bifpn.bifpn_nodes(3, 7) == [
      (6, (3, 4)), (5, (2, 5)), (4, (1, 6)), (3, (0, 7)),
      (4, (1, 7, 8)), (5, (2, 6, 9)), (6, (3, 5, 10)), (7, (4, 11))]
  assert len(bifpn.bifpn_nodes(3, 8)) == 10


def test_d7x_has_level_8():
  config = get_config('d7x')
  model = build_model(config)
  out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.PRNGKey(0), jnp.zeros((1, 1536, 1536, 3)), train=False))[0]
  assert [c.shape[1] for c in out[0]] == [192, 96, 48, 24, 12, 6]


def test_chunked_inference_equals_whole_batch(images, reference):
  from effdet_jax.models import inference
  variables, (cls_whole, box_whole) = reference
  config = tiny_config(conv_impl='native', inference_chunk_size=1)
  model = build_model(config)
  cls_chunked, box_chunked = jax.jit(lambda v, x: inference.forward(model, v, x))(
      variables, images)
  for a, b in zip(cls_whole + box_whole, cls_chunked + box_chunked):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_chunk_size_divides_the_batch():
  from effdet_jax.models.inference import chunk_size_for
  assert chunk_size_for(4, 8) == 4
  assert chunk_size_for(3, 8) == 2
  assert chunk_size_for(16, 8) == 8
  with pytest.raises(ValueError, match='inference_chunk_size'):
    chunk_size_for(-1, 8)


def test_remat_gives_the_same_gradients():
  """Rematerialization changes what the backward pass keeps, never what it computes."""
  images = jax.random.normal(jax.random.PRNGKey(3), (2, 32, 32, 3))
  grads, variables = [], None
  for remat in (False, True):
    config = get_config('d0')
    m = config.model
    m.backbone_scaling, m.image_size, m.num_classes = (0.25, 0.2), (32, 32), 3
    m.min_level, m.max_level, m.fpn_num_filters, m.remat = 3, 5, 8, remat
    m.fpn_cell_repeats, m.box_class_repeats, m.conv_impl = 1, 1, 'native'
    model = build_model(config)
    if variables is None:     # the same names either way
      variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(images)

    def loss(params, batch_stats):
      (cls, box), _ = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                                  train=True, mutable=['batch_stats'])
      return sum(jnp.sum(jnp.square(o)) for o in cls + box)

    grads.append(jax.jit(jax.grad(loss))(variables['params'], variables['batch_stats']))
  # Recomputed activations may be summed in another order: float32 noise only.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max() + 1e-7),
               *grads)
