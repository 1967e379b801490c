"""Where a compiled TPU program's time goes, by the part of the model each op
comes from.

XLA:TPU writes its estimate of every scheduled op's cost into the optimized
program (`estimated_cycles` in the op's `backend_config`). Summing them by the
op's `op_name` (the model's module path that JAX records while tracing, digits
collapsed so that `blocks_3` and `blocks_12` add up) shows which layers a
program spends its estimate on, forward and backward apart. A fusion is one
op: the ops inside fused computations are not counted again.
"""
import collections
import dataclasses
import re
from typing import Dict, Iterator, List, Tuple

_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%[\w.\-]+ = .*? ([a-z][\w\-]*)\(')
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r'calls=%([\w.\-]+)')


@dataclasses.dataclass
class Group:
  direction: str            # 'forward', 'backward' or '' (outside the model's autodiff)
  path: str                 # e.g. 'EfficientDet/backbone/blocks_#/jit(silu)/mul'
  cycles: int = 0
  ops: int = 0
  kinds: Dict[str, int] = dataclasses.field(default_factory=collections.Counter)

  @property
  def name(self) -> str:
    return f'{self.direction} {self.path}'.strip()


def _ops(hlo_text: str) -> Iterator[Tuple[str, str, int]]:
  """(op kind, op_name, estimated cycles) of each costed op outside fusions."""
  computations: Dict[str, List[str]] = {}
  fused = set()
  current = None
  for line in hlo_text.splitlines():
    if not line.startswith(' '):
      match = _COMPUTATION.match(line)
      current = match.group(1) if match else None
      if current:
        computations[current] = []
      continue
    match = _INSTRUCTION.match(line)
    if match and current:
      computations[current].append(line)
      if match.group(1) == 'fusion':
        fused.update(_CALLS.findall(line))
  for name, lines in computations.items():
    if name in fused:
      continue
    for line in lines:
      cycles = _CYCLES.search(line)
      if cycles:
        op_name = _OP_NAME.search(line)
        yield (_INSTRUCTION.match(line).group(1), op_name.group(1) if op_name else '',
               int(cycles.group(1)))


def _group_key(op_name: str) -> Tuple[str, str]:
  """'jit(train_step)/transpose(jvp(EfficientDet))/backbone/blocks_3/conv2d/...'
  -> ('backward', 'EfficientDet/backbone/blocks_#/conv#d/...')."""
  parts = op_name.split('/')
  if parts and parts[0].startswith('jit('):
    parts = parts[1:]
  direction = ''
  if parts:
    head = parts[0]
    if head.startswith('transpose('):
      direction, head = 'backward', head[len('transpose('):-1]
    elif head.startswith('jvp('):
      direction = 'forward'
    head = re.sub(r'^jvp\((.*)\)$', r'\1', head)
    parts = ([head] if head else []) + parts[1:]
  return direction, re.sub(r'\d+', '#', '/'.join(parts)) or '(unnamed)'


def breakdown(hlo_text: str) -> List[Group]:
  """The program's costed ops grouped by where in the model they come from,
  the most expensive group first."""
  groups: Dict[Tuple[str, str], Group] = {}
  for kind, op_name, cycles in _ops(hlo_text):
    key = _group_key(op_name)
    group = groups.setdefault(key, Group(*key))
    group.cycles += cycles
    group.ops += 1
    group.kinds[kind] += cycles
  return sorted(groups.values(), key=lambda g: -g.cycles)


def largest_parts(hlo_text: str, count: int) -> List[dict]:
  """The `count` most expensive parts, each with its share of the program's
  estimated cycles and the shares of its op kinds, the largest first."""
  groups = breakdown(hlo_text)
  total = sum(g.cycles for g in groups) or 1
  return [{'part': g.name, 'fraction': g.cycles / total, 'ops': g.ops,
           'op_kinds': {k: c / total for k, c in sorted(g.kinds.items(), key=lambda kc: -kc[1])}}
          for g in groups[:count]]
