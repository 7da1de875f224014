"""Tests of the project's structure, read from the sources: who imports whom, and sizes.

One home per concept: a stage program (train, eval, results, export, classify, prune,
quantize) never imports another, only library modules; evaluation, the results table and
compression read a run through cifar10_run.py, never through the trainer (compress/prune.py
reuses the trainer library, by design); no two project modules import each other, directly
or in a ring; the record reader and the int8 runner stay free of TensorFlow; the checkpoint
layout is built in one place, and a run is opened for inference in one place.
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


# The programs of the pipeline's stages (cifar10_records and compress/int8.py have a small
# command line too, but are libraries that others import).
STAGE_PROGRAMS = ('cifar10_train', 'cifar10_eval', 'cifar10_results', 'cifar10_export',
                  'cifar10_classify', 'cifar10_sweep', 'compress.prune', 'compress.qat',
                  'compress.quantize', 'compress.slim')


def test_the_graph_sees_the_known_imports(graph):
  # Guards the reader itself: a parser that found nothing would pass every test below.
  assert 'cifar10_run' in graph['cifar10_eval']
  assert 'cifar10_trainer' in graph['compress.prune']
  assert {'models.alex', 'models.tutorial', 'cifar10_spectral'} <= graph['models']
  assert 'compress.sparse' in graph['compress.int8']
  assert 'cifar10_run' in graph['cifar10_classify']  # Imported inside a function.


@pytest.mark.parametrize('program', STAGE_PROGRAMS)
def test_no_stage_program_imports_another(graph, program):
  others = set(STAGE_PROGRAMS) - {program}
  assert not reachable(graph, program) & others, (
      f'{program} imports {sorted(reachable(graph, program) & others)}: move what it needs '
      'into a library module')


@pytest.mark.parametrize('module', ['cifar10_eval', 'cifar10_results', 'compress.quantize',
                                    'compress.fake_quant', 'compress.trace', 'compress.int8',
                                    'compress.sparse', 'cifar10_run', 'cifar10_scoring',
                                    'cifar10_export', 'cifar10_classify'])
def test_reading_a_run_never_imports_the_trainer(graph, module):
  assert not {'cifar10_train', 'cifar10_trainer'} & reachable(graph, module)


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


def test_a_run_is_opened_for_inference_in_one_place_by_its_callers():
  sources = {name: open(path).read() for name, path in project_modules().items()}
  definers = [name for name, text in sources.items()
              if 'def load_inference_model(' in text]
  callers = sorted(name for name, text in sources.items()
                   if 'cifar10_run.load_inference_model(' in text)
  assert definers == ['cifar10_run']
  assert callers == ['cifar10_classify', 'cifar10_distill', 'cifar10_eval', 'cifar10_export',
                     'cifar10_sweep', 'compress.prune', 'compress.quantize', 'compress.slim']
  # Nobody else restores EMA shadows into a model by hand.
  assert sorted(name for name, text in sources.items() if '.restore_ema_shadows()' in text) == [
      'cifar10_eval', 'cifar10_run']


def functions(path):
  """(qualified name, lines) of every function and class defined in a source file."""
  tree = ast.parse(open(path).read())
  found = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      found.append((node.name, node.end_lineno - node.lineno + 1, type(node).__name__))
  return found


def test_library_functions_are_short_and_the_trainer_and_the_training_program_small():
  long = [(module, name, lines) for module, path in project_modules().items()
          for name, lines, kind in functions(path) if kind == 'FunctionDef' and lines > 60]
  assert not long, f'functions over 60 lines: {long}'
  trainer = [lines for name, lines, kind in functions(project_modules()['cifar10_trainer'])
             if name == 'Trainer']
  assert trainer and trainer[0] <= 150
  assert len(open(project_modules()['cifar10_train']).read().splitlines()) <= 150
