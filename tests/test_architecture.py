"""Tests of the project's structure, read from the sources: who imports whom.

One home per concept: evaluation, the results table and compression read a run through
cifar10_run.py, never through the trainer (compress/prune.py reuses the training loop, by
design); no two project modules import each other, directly or in a ring; the record reader
and the int8 runner stay free of TensorFlow; the checkpoint layout is built in one place.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('models', 'compress')


def project_modules():
  """{module name: source path} of every module of the project (not tests/ or bench/)."""
  modules = {name[:-3]: os.path.join(ROOT, name) for name in os.listdir(ROOT)
             if name.endswith('.py')}
  for package in PACKAGES:
    for name in os.listdir(os.path.join(ROOT, package)):
      if name.endswith('.py'):
        module = package if name == '__init__.py' else f'{package}.{name[:-3]}'
        modules[module] = os.path.join(ROOT, package, name)
  return modules


def imports_of(path, known):
  """The modules of `known` and the third-party top-level names that `path` imports."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      # `from compress import int8` imports compress.int8; `from models.x import y`, models.x.
      names = [f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in known
               else node.module for alias in node.names]
    else:
      continue
    found.update(name if name in known else name.split('.')[0] for name in names)
  return found


@pytest.fixture(scope='module')
def graph():
  modules = project_modules()
  return {name: imports_of(path, modules) & set(modules) for name, path in modules.items()}


def reachable(graph, start):
  seen, todo = set(), [start]
  while todo:
    for target in graph.get(todo.pop(), ()):
      if target not in seen:
        seen.add(target)
        todo.append(target)
  return seen


def test_the_graph_sees_the_known_imports(graph):
  # Guards the reader itself: a parser that found nothing would pass every test below.
  assert 'cifar10_run' in graph['cifar10_eval'] and 'cifar10_train' in graph['compress.prune']
  assert {'models.alex', 'models.tutorial', 'cifar10_spectral'} <= graph['models']
  assert 'compress.sparse' in graph['compress.int8']


@pytest.mark.parametrize('module', ['cifar10_eval', 'cifar10_results', 'compress.quantize',
                                    'compress.fake_quant', 'compress.trace', 'compress.int8',
                                    'compress.sparse', 'cifar10_run'])
def test_reading_a_run_never_imports_the_trainer(graph, module):
  assert 'cifar10_train' not in reachable(graph, module)


def test_no_project_module_imports_itself_through_others(graph):
  for module in graph:
    assert module not in reachable(graph, module), f'{module} is on an import cycle'


@pytest.mark.parametrize('module', ['cifar10_records', 'compress.int8', 'compress.sparse'])
def test_the_record_reader_and_the_int8_runner_never_import_tensorflow(module):
  modules = project_modules()
  graph = {name: imports_of(path, modules) for name, path in modules.items()}
  for name in ({module} | reachable(graph, module)) & set(modules):
    assert 'tensorflow' not in imports_of(modules[name], modules), name


def test_the_checkpoint_layout_is_built_in_one_place():
  builders = [name for name, path in project_modules().items()
              if 'tf.train.Checkpoint(' in open(path).read()]
  assert builders == ['cifar10_run']
