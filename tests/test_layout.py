"""The package's layout, read from the source: commands apart from libraries, no import circle,
no arrow running up, project imports at the top of modules, modules of a readable size.

A command is an entry file `alexnet_jax/<name>.py` (`python -m alexnet_jax.<name>`): its flags,
`main`, and the call of runtime/command.py. Everything in a folder is a library."""

import ast
import os

import conftest

PACKAGE = os.path.join(conftest.ROOT, 'alexnet_jax')

# What each folder may import from the project (besides itself). Read bottom-up: runtime imports
# nothing of the project; report only runtime (its files go through runtime/paths.py, so that an
# --out may be gs://); data reads no model; core is the network, the step and
# the loop; program reads compiled steps; pods predicts machines from compiled programs and never
# reads a dataset; perf measures here; paper trains and reads runs.
ALLOWED = {
    'runtime': set(),
    'report': {'runtime'},
    'data': {'runtime'},
    'core': {'runtime', 'data'},
    'program': {'runtime', 'core'},
    'pods': {'runtime', 'core', 'program', 'report'},
    'perf': {'runtime', 'data', 'core', 'program', 'pods', 'report'},
    'paper': {'runtime', 'data', 'core', 'report'},
}
# Project modules a library may import inside a function: optional dependencies only.
OPTIONAL = {'alexnet_jax.report.charts': 'matplotlib, only where a chart is drawn'}
MAX_LINES = 500
# The five strategies side by side, each a short shard_map: read together, as one table.
LONG_ON_PURPOSE = {'alexnet_jax.core.strategies'}
FLAG_DEFINERS = ('flags', 'config_flags')


def _modules() -> dict[str, str]:
  """{'alexnet_jax.core.run': path} of every module of the package."""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, conftest.ROOT)[:-3].replace(os.sep, '.')
        found[rel.removesuffix('.__init__')] = path
  return found


MODULES = _modules()
COMMANDS = {m for m, path in MODULES.items()
            if os.path.dirname(path) == PACKAGE and not path.endswith('__init__.py')}
LIBRARIES = {m for m in MODULES if m.count('.') > 1 or m.endswith('__init__')}


def _imports(path: str) -> list[tuple[str, bool]]:
  """(project module imported, whether at the top level of the module) for each import."""
  with open(path) as f:
    tree = ast.parse(f.read())
  top = set()

  def visit_top(nodes):
    for node in nodes:  # module level, and inside module-level if/with/try blocks
      top.add(node)
      if isinstance(node, (ast.If, ast.With, ast.Try)):
        visit_top(node.body)
        visit_top(getattr(node, 'orelse', []))
        for handler in getattr(node, 'handlers', []):
          visit_top(handler.body)
  visit_top(tree.body)
  out = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in MODULES
               else node.module for a in node.names]
    for name in names:
      if name.startswith('alexnet_jax.'):
        while name not in MODULES and '.' in name:
          name = name.rsplit('.', 1)[0]
        out.append((name, node in top))
  return out


IMPORTS = {m: _imports(p) for m, p in MODULES.items()}


def _folder(module: str) -> str:
  return module.split('.')[1]


def test_no_command_imports_a_command_and_no_library_is_a_command():
  problems = []
  for module, imports in IMPORTS.items():
    for name, _ in imports:
      if name in COMMANDS and name != module:
        problems.append(f'{module} imports the command {name}')
  for module in LIBRARIES:
    with open(MODULES[module]) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr.startswith('DEFINE') and isinstance(node.func.value, ast.Name)
          and node.func.value.id in FLAG_DEFINERS):
        problems.append(f'{module} defines the flag of a command (line {node.lineno})')
      if isinstance(node, ast.FunctionDef) and node.name in ('main', 'cli') and node.col_offset == 0:
        problems.append(f'{module} has a command\'s {node.name}()')
  assert not problems, '\n'.join(problems)


def test_every_command_runs_under_the_command_runner():
  for module in COMMANDS:
    with open(MODULES[module]) as f:
      text = f.read()
    assert "if __name__ == '__main__':" in text and 'command.run(main' in text, module


def test_no_import_circle():
  graph = {m: {n for n, _ in IMPORTS[m] if n != m} for m in MODULES}
  # A module's package __init__ is imported with it: leave the packages' own files out.
  graph = {m: {n for n in deps if n.count('.') > 1} for m, deps in graph.items()}
  index, low, stack, on_stack, circles = {}, {}, [], set(), []

  def strongly_connect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        strongly_connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        circles.append(sorted(component))

  for v in graph:
    if v not in index:
      strongly_connect(v)
  assert not circles, circles


def test_no_arrow_runs_up():
  problems = []
  for module, imports in IMPORTS.items():
    if module not in LIBRARIES:
      continue
    folder = _folder(module)
    for name, _ in imports:
      other = _folder(name) if name.count('.') > 1 else None
      if other and other != folder and other not in ALLOWED[folder]:
        problems.append(f'{module} imports {name}: {folder}/ may import '
                        f'{sorted(ALLOWED[folder]) or "nothing of the project"}')
  assert not problems, '\n'.join(problems)


def test_every_folder_is_in_the_layering():
  folders = {_folder(m) for m in LIBRARIES}
  assert folders == set(ALLOWED), folders ^ set(ALLOWED)


def test_project_imports_sit_at_the_top_of_libraries():
  problems = [f'{module} imports {name} inside a function'
              for module, imports in IMPORTS.items() if module in LIBRARIES
              for name, at_top in imports if not at_top and name not in OPTIONAL]
  assert not problems, '\n'.join(problems)


def test_no_module_is_over_500_lines():
  long = {}
  for module, path in MODULES.items():
    with open(path) as f:
      lines = sum(1 for _ in f)
    if module not in LONG_ON_PURPOSE and lines > MAX_LINES:
      long[module] = lines
  assert not long, long
