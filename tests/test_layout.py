"""The package's layering: each package imports only from the layers below it
(docs/architecture.md), and no module imports itself back through others."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'effdet_jax'
# What each package may import from (besides itself).
ALLOWED = {
    'runtime': set(),
    'configs': set(),
    'models': {'runtime', 'configs'},
    'detection': {'runtime'},
    'data': {'runtime'},
    'inference': {'runtime', 'models', 'detection', 'data'},
    'training': {'runtime', 'models', 'detection', 'data', 'inference'},
    'export': {'runtime', 'models', 'detection', 'data', 'inference', 'training'},
    'tools': {'runtime', 'configs', 'models', 'detection', 'data', 'inference', 'training',
              'export'},
    'main': {'runtime', 'data', 'inference', 'training'},
    '__init__': {'runtime'},
}


def _modules():
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    if parts[1] == 'configs' and len(parts) > 2 and parts[2] == 'sweeps':
      continue   # sweep files are loaded by path, as configs for tools.sweep
    yield '.'.join(p for p in parts if p != '__init__'), path


def _imports(path: pathlib.Path):
  """The effdet_jax modules `path` imports (`from effdet_jax.x import y` gives
  `effdet_jax.x.y` where that is a module, else `effdet_jax.x`)."""
  names = dict(_modules())
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.startswith('effdet_jax'))
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('effdet_jax'):
      for alias in node.names:
        full = f'{node.module}.{alias.name}'
        yield full if full in names else node.module


def _package(module: str) -> str:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else '__init__'


def test_imports_point_down():
  wrong = []
  for module, path in _modules():
    package = _package(module)
    allowed = ALLOWED[package] | {package}
    wrong += [f'{module} ({package}) imports {m}' for m in sorted(set(_imports(path)))
              if _package(m) not in allowed]
  assert not wrong, '\n'.join(wrong)


def test_no_import_cycles():
  # A command importing itself as a module under `__main__` (tools.sweep, so that
  # sweep files and the command share one `Sweep` class) is not a cycle.
  graph = {module: set(_imports(path)) - {module} for module, path in _modules()}
  state = {}

  def visit(module, stack):
    state[module] = 'open'
    for other in sorted(graph.get(module, ())):
      if state.get(other) == 'open':
        raise AssertionError('import cycle: ' + ' -> '.join(stack[stack.index(other):] + [other]))
      if other not in state:
        visit(other, stack + [other])
    state[module] = 'done'

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
