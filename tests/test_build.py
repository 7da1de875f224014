"""BUILD, derived from the sources: the test that it is up to date, and the script that writes it.

`.venv/bin/python tests/test_build.py > BUILD` prints the expected BUILD. Every project module
is in one py_library (the models/ package in one, count.py aside) whose deps are the libraries
of the project modules it imports, read with ast as tests/test_architecture.py reads them
(imports inside functions count; a package's module also imports the package's __init__.py):
no more, no fewer. Every program (a module with a `__main__` block) has a py_binary on its
library. Every tests/test_*.py has a small target for its unit tests and a large `_slow` one for
its real-data and subprocess tests, where it has them, told apart as conftest.py tiers them.
Bazel is not installed here: this checks what the rules say, not that they build.
"""

import ast
import difflib
import os
import sys
import tomllib

import pytest

from test_architecture import ROOT, imports_of, project_modules

HEADER = """\
# Bazel targets mirroring the files. Native py_* rules, so `bazel query //...` needs nothing
# fetched; `bazel test //...` also needs a Python 3.11 with requirements.txt installed on the
# PATH (the venv of `make test`), since these targets declare no pip dependencies.
#
# Tests come in the suite's tiers: `<file>` runs a file's unit tests (size small),
# `<file>_slow` its real-data and subprocess tests (size large), where it has any.
# `bazel test //... --test_size_filters=small` is `make test-fast`.
#
# Written from the sources' imports by tests/test_build.py, which fails when they differ:
# regenerate with `.venv/bin/python tests/test_build.py > BUILD`. A module's library depends on
# the libraries of the modules it imports directly. A program is a py_binary of its own name on
# a `<name>_lib` library, but one that other modules import too (cifar10_records.py,
# compress/int8.py) keeps its name for the library, its binary being `<name>_runner`.

package(default_visibility = ["//visibility:public"])"""

# (target suffix, size, pytest -m expression) of each tier.
TIERS = {'unit': ('', 'small', 'unit'), 'slow': ('_slow', 'large', "'not unit'")}


def parse(path):
  """The ast of a source file, by its path from the project's root."""
  with open(os.path.join(ROOT, path)) as f:
    return ast.parse(f.read())


def is_program(path):
  """Whether a source file runs as a program: it has an `if __name__ == '__main__':`."""
  return any(isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
             for node in parse(path).body)


def library_name(module, stage):
  """The py_library holding `module`; `stage`: a program that no project module imports."""
  if module == 'models' or (module.startswith('models.') and module != 'models.count'):
    return 'models'  # One package: its __init__ imports every model into the zoo.
  base = module.split('.')[-1]
  return base + '_lib' if stage else base  # The program's own name goes to its py_binary.


def libraries():
  """({library: {'srcs', 'deps', 'binary', 'program'}}, {module: its library}): a library's
  sources, the libraries they import, and its py_binary and the program's source, if any."""
  modules = project_modules()
  graph = {name: imports_of(path, modules) & set(modules) for name, path in modules.items()}
  imported = set().union(*graph.values())
  programs = {name for name, path in modules.items() if is_program(path)}
  home = {name: library_name(name, name in programs - imported) for name in modules}
  found = {}
  for name, path in sorted(modules.items(), key=lambda item: item[1]):
    library = found.setdefault(home[name], {'srcs': [], 'deps': set(), 'binary': None})
    library['srcs'].append(os.path.relpath(path, ROOT))
    package = {name.rpartition('.')[0]} - {''}  # compress.x runs compress/__init__.py first.
    library['deps'] |= {home[other] for other in graph[name] | package} - {home[name]}
    if name in programs:
      library['binary'] = name.split('.')[-1] + ('_runner' if name in imported else '')
      library['program'] = library['srcs'][-1]
  return found, home


def fixture_requests(tree):
  """({fixture: the names it requests}, {autouse fixture}) of the fixtures a module defines."""
  requests, autouse = {}, set()
  for node in tree.body:
    for decorator in getattr(node, 'decorator_list', ()):
      text = ast.unparse(decorator)
      if text.startswith('pytest.fixture'):
        names = [kw.value.value for kw in getattr(decorator, 'keywords', ()) if kw.arg == 'name']
        name = names[0] if names else node.name
        requests[name] = {arg.arg for arg in node.args.args}
        if 'autouse=True' in text:
          autouse.add(name)
  return requests, autouse


def requested(names, fixtures):
  """`names` and every fixture they request, directly or through other fixtures."""
  seen, todo = set(), list(names)
  while todo:
    name = todo.pop()
    if name not in seen:
      seen.add(name)
      todo.extend(fixtures.get(name, ()))
  return seen


def module_value(tree, name):
  """The source of what a module assigns to `name` at its top, or ''."""
  for node in tree.body:
    if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == name:
      return ast.unparse(node.value)
  return ''


def tiers(path):
  """The tiers ('unit', 'slow') of a test file's tests, as conftest.py marks them: slow by a
  subprocess or stage marker (of the module or the test) or a real-data or stage fixture,
  however far down."""
  conftest, tree = parse('tests/conftest.py'), parse(path)
  # Read, not imported: importing conftest.py imports TensorFlow.
  slow_fixtures = (ast.literal_eval(module_value(conftest, 'REAL_DATA_FIXTURES'))
                   | ast.literal_eval(module_value(conftest, 'STAGE_FIXTURES')))
  (fixtures, autouse), (local, local_autouse) = fixture_requests(conftest), fixture_requests(tree)
  fixtures.update(local)
  slow_marks = ('mark.subprocess', 'mark.stage')
  module_slow = any(mark in module_value(tree, 'pytestmark') for mark in slow_marks)
  found = set()
  for node in tree.body:
    if isinstance(node, ast.FunctionDef) and node.name.startswith('test'):
      marks = [ast.unparse(decorator) for decorator in node.decorator_list]
      names = {arg.arg for arg in node.args.args} | autouse | local_autouse
      slow = (module_slow or any(f'pytest.{mark}' in marks for mark in slow_marks)
              or requested(names, fixtures) & slow_fixtures)
      found.add('slow' if slow else 'unit')
      if any(slow_mark in mark for mark in marks for slow_mark in slow_marks):
        found.add('slow')  # pytest.param(..., marks=...) in a parametrize: some cases only.
  return found


def read_test_files(home):
  """{test: {'deps', 'tiers', 'helpers'}} of every tests/test_*.py; helpers: the test modules
  it imports (tests/test_build.py imports test_architecture), which go into its srcs."""
  found = {}
  for name in sorted(os.listdir(os.path.join(ROOT, 'tests'))):
    if name.startswith('test_') and name.endswith('.py'):
      imports = imports_of(os.path.join(ROOT, 'tests', name), home)
      found[name[:-3]] = {
          'deps': {home[module] for module in imports & set(home)} | {'conftest'},
          'tiers': tiers(os.path.join('tests', name)),
          'helpers': [f'tests/{module}.py' for module in sorted(imports)
                      if module.startswith('test_')]}
  return found


class Expr(str):
  """Starlark text written as it is (a glob, a sum), not as a string literal."""


def starlark(value, indent=4):
  """A value as Starlark text: a list one item a line, closed at `indent`, but a single item."""
  if isinstance(value, Expr):
    return value
  if isinstance(value, bool):
    return str(value)
  if not isinstance(value, list):
    return f'"{value}"'
  if len(value) == 1:
    return f'[{starlark(value[0])}]'
  pad = ' ' * indent
  return '[\n' + ''.join(f'{pad}    {starlark(item)},\n' for item in value) + pad + ']'


def glob(patterns):
  """A Starlark glob of `patterns`, as an attribute's value."""
  return Expr(f'glob({starlark(patterns)})')


def labels(names):
  """The sorted labels of targets of this package."""
  return [f':{name}' for name in sorted(names)]


def rule(kind, comment=None, **attributes):
  """A rule call laid out as buildifier does; attributes in the given order, empty ones out."""
  lines = [f'# {comment}'] if comment else []
  lines.append(f'{kind}(')
  lines += [f'    {key} = {starlark(value)},' for key, value in attributes.items() if value]
  return '\n'.join(lines + [')'])


def library_rules(found, home):
  """The py_library and py_binary rules of the project modules and of tests/conftest.py."""
  rules = []
  for name, library in sorted(found.items(), key=lambda item: item[1]['srcs']):
    srcs = library['srcs']
    if name == 'models':  # As a glob, so that a new model file is in it at once.
      srcs = Expr('glob(\n        ["models/*.py"],\n        exclude = ["models/count.py"],\n    )')
    rules.append(rule('py_library', name=name, srcs=srcs, deps=labels(library['deps'])))
    if library['binary']:
      program = library['program']  # main only where Bazel cannot infer it from the name.
      rules.append(rule('py_binary', name=library['binary'], srcs=[program],
                        main=program if program != library['binary'] + '.py' else None,
                        deps=labels([name])))
  conftest = ['tests/conftest.py', 'tests/fixtures.py']
  deps = set().union(*(imports_of(os.path.join(ROOT, src), home) for src in conftest))
  rules.append(rule('py_library', name='conftest', testonly=True, srcs=conftest,
                    deps=labels(home[module] for module in deps & set(home))))
  return rules


# The test files that read more than the programs they start: {name: (why, data)}.
SOURCES = ['*.py', 'compress/*.py', 'models/*.py']
TEST_DATA = {
    'test_architecture': ("Reads the project's sources to check who imports whom.",
                          glob(SOURCES)),
    'test_build': ('Reads the sources, the tests and this file to check the targets above.',
                   Expr('["BUILD"] + ' + glob(SOURCES + ['tests/*.py']))),
    'test_pretrained': ('The int8 models kept in pretrained/: listed and loadable (unit), '
                        'scoring their figure (slow).', glob(['pretrained/*'])),
}


def is_plain(name, test):
  """Whether a test file's targets are the common ones, written by a list comprehension."""
  return name not in TEST_DATA and not test['helpers']


def shared_lists(tests, programs):
  """TEST_DEPS, the deps of each plain test file, and BINARIES, the programs' sources."""
  deps = ''.join(f'    "{name}": {starlark(labels(test["deps"]))},\n'
                 for name, test in tests.items() if is_plain(name, test))
  return ['# What each test file imports, and the conftest.\nTEST_DEPS = {\n' + deps + '}',
          '# What the subprocess tests run.\nBINARIES = ' + starlark(sorted(programs), 0)
          + ' + glob(["bench/*.py"])  # tests/test_error_paths.py runs them all on bad input']


def special_test_rules(tests):
  """The targets of the test files with data of their own or test modules in their srcs."""
  rules = []
  for name, test in tests.items():
    if not is_plain(name, test):
      comment, data = TEST_DATA.get(name, (None, None))
      for tier in sorted(test['tiers'], reverse=True):  # unit, then slow.
        suffix, size, marker = TIERS[tier]
        rules.append(rule(
            'py_test', comment=comment if tier == 'unit' else None, name=name + suffix,
            size=size, srcs=sorted(['tests/pytest_main.py', f'tests/{name}.py', *test['helpers']]),
            args=['-m', marker, f'$(location tests/{name}.py)'],
            data=data or (Expr('BINARIES') if tier == 'slow' else None),
            main='tests/pytest_main.py', deps=labels(test['deps'])))
  return rules


TIER_RULE = """\
[py_test(
    name = name{suffix},
    size = "{size}",
    srcs = [
        "tests/pytest_main.py",
        "tests/%s.py" % name,
    ],
    args = [
        "-m",
        "{marker}",
        "$(location tests/%s.py)" % name,
    ],{data}
    main = "tests/pytest_main.py",
    deps = TEST_DEPS[name],
) for name in {names}]"""


def tier_rules(tests):
  """The plain test files' targets: one list comprehension per tier."""
  rules = []
  for tier in ('unit', 'slow'):
    suffix, size, marker = TIERS[tier]
    names = [name for name, test in tests.items() if is_plain(name, test) and tier in test['tiers']]
    rules.append(TIER_RULE.format(
        suffix=f' + "{suffix}"' if suffix else '', size=size, marker=marker,
        data='\n    data = BINARIES,' if tier == 'slow' else '', names=starlark(names, 0)))
  rules[0] = ('# Real-data tests read CIFAR10_DATA: '
              'bazel test //... --test_env=CIFAR10_DATA=<archive path>.\n' + rules[0])
  return rules


def build_text():
  """The BUILD file that the sources call for."""
  found, home = libraries()
  tests = read_test_files(home)
  programs = [library['program'] for library in found.values() if library['binary']]
  parts = [HEADER, *library_rules(found, home), *shared_lists(tests, programs),
           *special_test_rules(tests), *tier_rules(tests)]
  return '\n\n'.join(parts) + '\n'


def test_build_file_is_what_the_sources_import():
  with open(os.path.join(ROOT, 'BUILD')) as f:
    actual = f.read()
  expected = build_text()
  if actual != expected:
    diff = difflib.unified_diff(actual.splitlines(), expected.splitlines(), 'BUILD',
                                'expected', lineterm='')
    pytest.fail('BUILD is out of date with the sources: regenerate it with '
                '`.venv/bin/python tests/test_build.py > BUILD` and review the change.\n'
                + '\n'.join(diff), pytrace=False)


def test_the_generator_sees_the_known_imports_and_tiers():
  # Guards the generator itself: one that read nothing would write a BUILD it agrees with.
  found, home = libraries()
  assert 'cifar10_run' in found['cifar10_eval_lib']['deps']
  assert 'cifar10_trainer' not in found['cifar10_eval_lib']['deps']
  assert 'cifar10_run' in found['cifar10_classify_lib']['deps']  # Imported inside a function.
  assert found['sparse']['deps'] == {'compress'}  # Its package's __init__.py.
  assert found['models']['deps'] == {'cifar10_model', 'cifar10_spectral'}
  assert found['int8']['binary'] == 'int8_runner' and found['prune_lib']['binary'] == 'prune'
  tests = read_test_files(home)
  assert tests['test_binaries']['tiers'] == {'slow'}  # The module's pytestmark.
  assert tests['test_sparse']['tiers'] == {'unit'}
  assert tests['test_classify']['tiers'] == {'unit', 'slow'}  # Real data through a fixture.
  assert tests['test_qat']['tiers'] == {'unit', 'slow'}  # A stage fixture, `source`.
  assert 'cifar10_eval_lib' in tests['test_cifar10_eval']['deps']


def test_each_library_holds_one_module_but_the_models_package():
  # Two modules of one name in two folders would otherwise share a library silently.
  found, home = libraries()
  assert {name for name, library in found.items() if len(library['srcs']) > 1} == {'models'}



def requirements(name):
  """The requirement lines of a requirements file, comments and blank lines left out."""
  with open(os.path.join(ROOT, name)) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith('#')]


def test_pyproject_installs_every_module_with_the_requirements_files_pins():
  # `pip install -e .` and the Makefile's route must install the same project and versions.
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    pyproject = tomllib.load(f)
  project, setuptools = pyproject['project'], pyproject['tool']['setuptools']
  extras = project['optional-dependencies']
  runtime = project['dependencies'] + extras['test']
  assert sorted(runtime) == sorted(requirements('requirements.txt'))
  assert extras['test'] == ['pytest==9.2.0', 'pytest-xdist==3.8.0']
  assert extras['deploy'] == requirements('requirements-deploy.txt')
  assert extras['profile'] == requirements('requirements-profile.txt')
  assert extras['sweep'] == requirements('requirements-sweep.txt')
  top_level = sorted(name[:-3] for name in os.listdir(ROOT)
                     if name.startswith('cifar10_') and name.endswith('.py'))
  assert setuptools['py-modules'] == top_level
  packages = sorted(name for name in os.listdir(ROOT)
                    if os.path.isfile(os.path.join(ROOT, name, '__init__.py')))
  assert sorted(setuptools['packages']) == packages == ['compress', 'models']
  assert project['license'] == 'Apache-2.0' and project['license-files'] == ['LICENSE']


if __name__ == '__main__':
  sys.stdout.write(build_text())
