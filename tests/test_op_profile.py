"""The per-op profile: which convolutions and products a function binds, and their cost."""
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effdet_jax.tools import op_profile


def _depthwise(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=x.shape[-1])


@jax.custom_vjp
def _custom_product(x, w):
  return x @ w


_custom_product.defvjp(lambda x, w: (x @ w, (x, w)), lambda r, g: (g @ r[1].T, r[0].T @ g))


def _network(x, k, w):
  y = _depthwise(_depthwise(x, k), k)                     # the same op twice
  y = jax.jit(_depthwise)(y[:, ::2, ::2], k)              # another shape, inside a nested jit
  flat = y.reshape(-1, y.shape[-1])
  z = jax.lax.fori_loop(0, 2, lambda i, v: _custom_product(v, w), flat)   # in a loop and a custom vjp
  return jnp.sum(z)


ARGS = (jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32), jax.ShapeDtypeStruct((3, 3, 1, 4), jnp.float32),
        jax.ShapeDtypeStruct((4, 4), jnp.float32))


@functools.lru_cache()
def _ops():
  return op_profile.collect(_network, *ARGS)


def test_collect_finds_each_distinct_op_once_with_its_count():
  ops = _ops()
  assert [(op.primitive.name, op.count) for op in ops] == [
      ('conv_general_dilated', 2), ('conv_general_dilated', 1), ('dot_general', 1)]
  assert ops[0].inputs[0].shape == (2, 8, 8, 4) and ops[0].output.shape == (2, 8, 8, 4)
  assert ops[1].inputs[0].shape == (2, 4, 4, 4)
  assert ops[2].inputs[0].shape == (32, 4) and ops[2].output.shape == (32, 4)


def test_describe_and_flops():
  conv, _, dot = _ops()
  assert op_profile.describe(conv) == (
      'conv float32[2,8,8,4] x float32[3,3,1,4] -> float32[2,8,8,4] stride 1x1 groups 4')
  assert op_profile.flops(conv) == 2 * (2 * 8 * 8 * 4) * 9      # 9 taps per output value
  assert op_profile.describe(dot) == 'dot float32[32,4] x float32[4,4] -> float32[32,4]'
  assert op_profile.flops(dot) == 2 * 32 * 4 * 4


def test_a_replayed_op_computes_what_the_original_did():
  conv = _ops()[0]
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
  k = np.random.default_rng(1).standard_normal((3, 3, 1, 4)).astype(np.float32)
  replay = conv.primitive.bind(jnp.asarray(x), jnp.asarray(k), **conv.params)
  np.testing.assert_allclose(replay, _depthwise(x, k), rtol=1e-6)


def test_time_op_reports_both_passes():
  timed = op_profile.time_op(_ops()[0], repeats=2, warmup=1)
  assert timed['forward_ms'] > 0 and timed['backward_ms'] > 0 and timed['compile_s'] > 0
  assert timed['forward_first_call_ms'] > 0 and timed['backward_first_call_ms'] > 0
  assert timed['forward_gflops_per_sec'] == pytest.approx(
      op_profile.flops(_ops()[0]) / timed['forward_ms'] / 1e6, rel=0.01)


def test_profile_names_each_op_before_it_runs():
  log = io.StringIO()
  rows = op_profile.profile(_ops()[2:], repeats=1, warmup=0, log=log)
  assert log.getvalue().startswith('[1/1] dot float32[32,4] x float32[4,4] -> float32[32,4] (x1) ...')
  assert rows[0]['count'] == 1 and rows[0]['dtype'] == 'float32'
