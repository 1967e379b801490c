"""Every distinct convolution and matrix product of a network, timed alone.

When a whole step is slow, or never finishes, on some accelerator and
precision, this names the layer shape to blame: each such operation that the
forward pass binds runs by itself on random inputs of its shapes and dtypes,
forward and backward (the gradients of both operands, what training adds),
with the same parameters (strides, groups, precision). The first call after
compilation is reported apart: on GPU it is where run-time set-up of a
library kernel (a cuDNN plan) would show. Elementwise work
(BatchNorm, activations, the `matmul` formulation's depthwise taps) is fused
into its neighbours in a real step and is not timed here.
"""
import sys
from typing import Callable, Dict, List, NamedTuple, Sequence

import jax
import jax.extend.core as jex
import numpy as np

from effdet_jax.tools import timing

PRIMITIVES = ('conv_general_dilated', 'dot_general')


class Op(NamedTuple):
  primitive: jex.Primitive
  params: Dict
  inputs: Sequence[jax.ShapeDtypeStruct]
  output: jax.ShapeDtypeStruct
  count: int              # how many times the network binds it


def collect(fn: Callable, *args) -> List[Op]:
  """The distinct convolutions and matrix products `fn(*args)` binds, nested
  calls (jit, custom gradients, loops) included, in order of first use."""
  found = {}

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in PRIMITIVES:
        inputs = tuple(jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars)
        key = (eqn.primitive.name, tuple((a.shape, str(a.dtype)) for a in inputs),
               repr(sorted(eqn.params.items())))
        if key in found:
          found[key] = found[key]._replace(count=found[key].count + 1)
        else:
          out = eqn.outvars[0].aval
          found[key] = Op(eqn.primitive, dict(eqn.params), inputs,
                          jax.ShapeDtypeStruct(out.shape, out.dtype), 1)
      for sub in jex.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return list(found.values())


def describe(op: Op) -> str:
  shapes = ' x '.join(_shape(a) for a in op.inputs) + ' -> ' + _shape(op.output)
  if op.primitive.name == 'dot_general':
    return f'dot {shapes}'
  strides = 'x'.join(str(s) for s in op.params['window_strides'])
  groups = op.params['feature_group_count']
  return f"conv {shapes} stride {strides}" + (f' groups {groups}' if groups > 1 else '')


def flops(op: Op) -> int:
  """Multiply-adds x 2 of the forward pass."""
  lhs, rhs = op.inputs
  if op.primitive.name == 'dot_general':
    (contract, _), _ = op.params['dimension_numbers']
    return 2 * int(np.prod(op.output.shape)) * int(np.prod([lhs.shape[d] for d in contract]))
  out_features = rhs.shape[op.params['dimension_numbers'].rhs_spec[0]]
  return 2 * int(np.prod(op.output.shape)) * int(np.prod(rhs.shape)) // out_features


def time_op(op: Op, repeats: int, warmup: int, seed: int = 0) -> Dict:
  """Median forward and backward times (ms) of one op, each one's first call (ms)
  and their compile time (s)."""
  def forward(*operands):
    return op.primitive.bind(*operands, **op.params)

  def backward(cotangent, *operands):
    return jax.vjp(forward, *operands)[1](cotangent)

  rng = np.random.default_rng(seed)
  operands = [jax.device_put(rng.standard_normal(a.shape).astype(a.dtype)) for a in op.inputs]
  cotangent = jax.device_put(rng.standard_normal(op.output.shape).astype(op.output.dtype))
  result, compile_s = {}, 0.0
  for name, fn, args in (('forward', forward, operands),
                         ('backward', backward, [cotangent, *operands])):
    compiled, seconds = timing.compile_timed(jax.jit(fn), *args)
    compile_s += seconds
    timed = timing.measure(lambda: jax.block_until_ready(compiled(*args)), repeats, warmup)
    result[f'{name}_ms'] = round(timed['median_s'] * 1e3, 4)
    result[f'{name}_first_call_ms'] = round(timed['first_call_s'] * 1e3, 3)
  moved = sum(_bytes(a) for a in (*op.inputs, op.output))
  result['forward_gflops_per_sec'] = _significant(flops(op) / result['forward_ms'] / 1e6)
  result['forward_gbytes_per_sec'] = _significant(moved / result['forward_ms'] / 1e6)
  result['compile_s'] = round(compile_s, 2)
  return result


def profile(ops: Sequence[Op], repeats: int, warmup: int, log=sys.stdout) -> List[Dict]:
  """Each op timed in turn. Its description is printed before it runs, so a
  run that hangs shows which op it hangs in."""
  rows = []
  for i, op in enumerate(ops):
    name = describe(op)
    print(f'[{i + 1}/{len(ops)}] {name} (x{op.count}) ...', end=' ', file=log, flush=True)
    timed = time_op(op, repeats, warmup)
    print(f"forward {timed['forward_ms']:.3f} ms (first call {timed['forward_first_call_ms']:.1f}),"
          f" backward {timed['backward_ms']:.3f} ms (first call {timed['backward_first_call_ms']:.1f})",
          file=log, flush=True)
    rows.append(dict(op=name, primitive=op.primitive.name, count=op.count,
                     dtype=str(op.inputs[0].dtype), gflops=round(flops(op) / 1e9, 4), **timed))
  return rows


def _shape(a) -> str:
  return f"{np.dtype(a.dtype).name}[{','.join(str(d) for d in a.shape)}]"


def _significant(value: float) -> float:
  return float(f'{value:.3g}')


def _bytes(a) -> int:
  return int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
