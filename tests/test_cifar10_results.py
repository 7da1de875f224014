"""Tests of the results tool: reading runs, the Pareto front, the table and the plot."""

import json
import os
import re

import numpy as np
import pytest

import cifar10_config
import cifar10_eval
import cifar10_flags
import cifar10_results
import cifar10_run


def write_run(train_dir, model, lines):
  cifar10_run.write_config(cifar10_config.TrainConfig(train_dir=str(train_dir), model=model))
  os.makedirs(train_dir / 'eval')
  with open(train_dir / 'eval' / 'results.jsonl', 'w') as f:
    for step, precision, seconds in lines:
      f.write(json.dumps({'step': step, 'precision_ema': precision, 'precision_raw': 0.5,
                          'num_examples': 10000, 'train_seconds': seconds}) + '\n')


def test_read_run_counts_the_model_and_takes_the_last_step(tmp_path):
  write_run(tmp_path / 'a', 'squeeze1', [(1000, 0.5, 60.0), (10000, 0.66, 600.0)])
  result = cifar10_results.read_run(str(tmp_path / 'a'))
  assert (result.model, result.params, result.flops) == ('squeeze1', 146_570, 22_836_024)
  assert result.final_precision == 0.66 and result.train_seconds == 600.0


def test_read_run_without_results_names_the_missing_file(tmp_path):
  cifar10_run.write_config(cifar10_config.TrainConfig(train_dir=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match='results.jsonl is missing'):
    cifar10_results.read_run(str(tmp_path))


def test_read_run_refuses_an_empty_or_foreign_results_file(tmp_path):
  write_run(tmp_path / 'empty', 'tutorial', [])
  with pytest.raises(cifar10_results.ResultsError, match='holds no evaluated checkpoint'):
    cifar10_results.read_run(str(tmp_path / 'empty'))
  write_run(tmp_path / 'foreign', 'tutorial', [(1000, 0.5, 60.0)])
  with open(tmp_path / 'foreign' / 'eval' / 'results.jsonl', 'a') as f:
    f.write('{"loss": 1.0}\n')
  with pytest.raises(cifar10_results.ResultsError, match=r'results.jsonl, line 2: not a'):
    cifar10_results.read_run(str(tmp_path / 'foreign'))


@pytest.mark.parametrize('line,reason', [
    ('{"step": "10", "precision_ema": 0.5, "train_seconds": 1.0}', 'step'),
    ('{"step": 10, "precision_ema": null, "train_seconds": 1.0}', 'step'),
    ('{"step": 1e400, "precision_ema": 0.5, "train_seconds": 1.0}', 'step'),
    ('{"step": 10, "precision_ema": NaN, "train_seconds": 1.0}', 'step'),
    ('{"step": 10, "precision_ema": 1.5, "train_seconds": 1.0}', 'step'),
    ('{"step": 10, "precision_ema": 0.5, "train_seconds": -1}', 'step'),
    ('[1, 2, 3]', 'not a cifar10_eval.py result'),
])
def test_read_run_refuses_values_out_of_their_range(tmp_path, line, reason):
  write_run(tmp_path, 'tutorial', [])
  (tmp_path / 'eval' / 'results.jsonl').write_text(line + '\n')
  with pytest.raises(cifar10_results.ResultsError, match=f'line 1: {reason}'):
    cifar10_results.read_run(str(tmp_path))


def test_read_run_refuses_invalid_utf8_and_a_folder_named_results_jsonl(tmp_path):
  write_run(tmp_path / 'bytes', 'tutorial', [])
  (tmp_path / 'bytes' / 'eval' / 'results.jsonl').write_bytes(b'\xff\xfe{"step"')
  with pytest.raises(cifar10_results.ResultsError, match='UnicodeDecodeError'):
    cifar10_results.read_run(str(tmp_path / 'bytes'))
  write_run(tmp_path / 'folder', 'tutorial', [])
  (tmp_path / 'folder' / 'eval' / 'results.jsonl').unlink()
  (tmp_path / 'folder' / 'eval' / 'results.jsonl').mkdir()
  with pytest.raises(cifar10_results.ResultsError, match='IsADirectoryError'):
    cifar10_results.read_run(str(tmp_path / 'folder'))


def test_table_has_the_10k_and_last_figures_recipe_and_tta_and_rows_by_cost(tmp_path):
  write_run(tmp_path / 'tuto', 'tutorial', [(10000, 0.8141, 3960.0)])
  write_run(tmp_path / 'sq', 'squeeze1', [(5000, 0.6, 300.0), (10000, 0.663, 600.0)])
  write_run(tmp_path / 'fast', 'tutorial', [(10000, 0.8420, 700.0)])
  with open(tmp_path / 'fast' / 'config.json') as f:
    config = json.load(f)
  with open(tmp_path / 'fast' / 'config.json', 'w') as f:
    json.dump(dict(config, recipe='fast'), f)
  os.makedirs(tmp_path / 'fast' / 'eval_flip')
  with open(tmp_path / 'fast' / 'eval_flip' / 'results.jsonl', 'w') as f:
    f.write(json.dumps({'step': 10000, 'precision_ema': 0.8511, 'train_seconds': 700.0}) + '\n')
  table = cifar10_results.markdown_table(
      [cifar10_results.read_run(str(tmp_path / name)) for name in ('tuto', 'sq', 'fast')])
  lines = table.splitlines()
  assert lines[0] == ('| run | model | recipe | input | params | MFLOPs | @10,000 | last step | '
                      'at last step | flip TTA | study @10,000 | difference | wall time |')
  assert lines[2] == ('| sq | squeeze1 | study | 24x24 | 146,570 | 22.84 | 66.30 | 10,000 | '
                      '66.30 |  | 66.0 | +0.30 | 10 min |')
  assert lines[3] == ('| fast | tutorial | fast | 24x24 | 1,068,298 | 37.75 | 84.20 | 10,000 | '
                      '84.20 | 85.11 | 81.4 | +2.80 | 12 min |')
  assert lines[4] == ('| tuto | tutorial | study | 24x24 | 1,068,298 | 37.75 | 81.41 | 10,000 | '
                      '81.41 |  | 81.4 | +0.01 | 66 min |')


def test_time_to_a_target_is_the_first_evaluated_checkpoint_that_reaches_it(tmp_path):
  write_run(tmp_path / 'r', 'tutorial', [(1000, 0.70, 60.0), (2000, 0.815, 130.5),
                                          (3000, 0.81, 190.0), (4000, 0.83, 250.0)])
  result = cifar10_results.read_run(str(tmp_path / 'r'))
  assert result.time_to(0.814) == (2000, 130.5)
  assert result.time_to(0.9) is None
  table = cifar10_results.markdown_table([result], target=0.814)
  assert table.splitlines()[0].endswith('| first at 81.4 % |')
  assert table.splitlines()[2].endswith('| step 2,000, 130 s |')


def test_a_table_written_before_reads_back_into_the_same_rows(tmp_path):
  write_run(tmp_path / 'tuto', 'tutorial', [(10000, 0.8141, 3960.0)])
  write_run(tmp_path / 'sq', 'squeeze1', [(5000, 0.6, 300.0), (10000, 0.663, 600.0)])
  table = cifar10_results.markdown_table(
      [cifar10_results.read_run(str(tmp_path / name)) for name in ('tuto', 'sq')])
  (tmp_path / 'results.md').write_text(table + '\n')
  again = cifar10_results.read_table(str(tmp_path / 'results.md'))
  assert cifar10_results.markdown_table(again) == table
  old = ('| run | model | params | MFLOPs | @1,012 | @10,000 | study @10,000 | difference | '
         'wall time |\n|---|---|---|---|---|---|---|---|---|\n'
         '| alex0 | alex0 | 1,463,594 | 25.24 |  | 81.54 | 82.2 | -0.66 | 27 min |\n')
  (tmp_path / 'old.md').write_text(old)
  row = cifar10_results.read_table(str(tmp_path / 'old.md'))[0]
  assert (row.name, row.recipe, row.image_size, row.final_precision) == (
      'alex0', 'study', 24, 0.8154)
  (tmp_path / 'bad.md').write_text('| a | b |\n| 1 | 2 |\n')
  with pytest.raises(cifar10_results.ResultsError, match='bad.md is not a results table'):
    cifar10_results.read_table(str(tmp_path / 'bad.md'))


def test_table_leaves_the_study_columns_empty_for_new_models(tmp_path):
  write_run(tmp_path / 'inc', 'inception0', [(10000, 0.8145, 1800.0)])
  table = cifar10_results.markdown_table([cifar10_results.read_run(str(tmp_path / 'inc'))])
  assert table.splitlines()[2].endswith('| 81.45 |  |  |  | 30 min |')


def test_plot_writes_a_png(tmp_path):
  write_run(tmp_path / 'tuto', 'tutorial', [(10000, 0.8141, 3960.0)])
  path = tmp_path / 'results.png'
  cifar10_results.plot([cifar10_results.read_run(str(tmp_path / 'tuto'))], str(path))
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_labels_of_close_points_are_spread_apart():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axis = plt.subplots()
  points = [(37.0, 81.40), (37.1, 81.44), (37.2, 81.46), (36.6, 81.9), (16.0, 68.1)]
  axis.scatter(*zip(*points))
  labels = [axis.annotate(f'model{i}', p, textcoords='offset points', xytext=(4, 4))
            for i, p in enumerate(points)]
  cifar10_results._spread_labels(figure, [labels])  # pylint: disable=protected-access
  renderer = figure.canvas.get_renderer()
  boxes = [label.get_window_extent(renderer) for label in labels]
  for i, a in enumerate(boxes):
    for b in boxes[i + 1:]:
      assert not a.overlaps(b)
  assert labels[4].xyann == (4, 4)  # A lone point keeps the default place.
  plt.close(figure)


def test_labels_name_the_run_only_when_two_runs_would_share_one(tmp_path):
  write_run(tmp_path / 'a', 'tutorial', [(10000, 0.81, 60.0)])
  write_run(tmp_path / 'b', 'tutorial', [(10000, 0.82, 60.0)])
  write_run(tmp_path / 'c', 'alex4', [(10000, 0.82, 60.0)])
  results = [cifar10_results.read_run(str(tmp_path / name)) for name in 'abc']
  assert [cifar10_results._label(r, results)  # pylint: disable=protected-access
          for r in results] == ['a', 'b', 'alex4']


def test_curves_and_the_confusion_matrix_are_drawn_from_the_eval_files(tmp_path):
  write_run(tmp_path / 'tuto', 'tutorial', [(5000, 0.7, 300.0), (10000, 0.8141, 600.0)])
  matrix = [[90 if i == j else 1 for j in range(10)] for i in range(10)]
  older = [[50 if i == j else 5 for j in range(10)] for i in range(10)]
  with open(tmp_path / 'tuto' / 'eval' / cifar10_run.CONFUSION_FILE, 'w') as f:
    for step in (10000, 5000):  # the newest step wins, wherever its line is
      f.write(json.dumps({'step': step, 'checkpoint': f'ckpt-{step}', 'tta': 'none',
                          'classes': list('abcdefghij'),
                          'ema': {'confusion': matrix if step == 10000 else older},
                          'raw': {'confusion': matrix}}) + '\n')
  step, classes, read = cifar10_results.read_confusion(str(tmp_path / 'tuto'))
  assert (step, classes, read) == (10000, list('abcdefghij'), matrix)
  run = cifar10_results.read_run(str(tmp_path / 'tuto'))
  cifar10_results.plot_curves({'tuto': run}, str(tmp_path / 'curves.png'))
  cifar10_results.plot_confusion(step, classes, read, 'tuto', str(tmp_path / 'confusion.png'))
  for name in ('curves.png', 'confusion.png'):
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_missing_or_broken_confusion_file_is_named(tmp_path):
  write_run(tmp_path / 'tuto', 'tutorial', [(10000, 0.8141, 600.0)])
  with pytest.raises(FileNotFoundError, match='confusion.jsonl is missing'):
    cifar10_results.read_confusion(str(tmp_path / 'tuto'))
  path = tmp_path / 'tuto' / 'eval' / cifar10_run.CONFUSION_FILE
  path.write_text('{"step": 1, "classes\n')
  with pytest.raises(cifar10_results.ResultsError,
                     match='line 1: not JSON .*: not a cifar10_eval.py confusion line'):
    cifar10_results.read_confusion(str(tmp_path / 'tuto'))
  path.write_text('\n')
  with pytest.raises(cifar10_results.ResultsError, match='holds no evaluated checkpoint'):
    cifar10_results.read_confusion(str(tmp_path / 'tuto'))


def confusion_record(**changes):
  """A confusion.jsonl line as cifar10_eval.confusion_line writes it, with `changes`."""
  matrix = [[90 if i == j else 1 for j in range(10)] for i in range(10)]
  per_class = [90 / 99] * 10
  line = {'step': 10000, 'checkpoint': 'ckpt-10000', 'checkpoint_digest': None, 'tta': 'none',
          'classes': list('abcdefghij'),
          'ema': {'confusion': matrix, 'per_class': per_class},
          'raw': {'confusion': matrix, 'per_class': per_class}}
  line.update(changes)
  return line


def with_cell(i, j, value, weights='ema'):
  """The `weights` entry of confusion_record with one cell of its matrix replaced."""
  matrix = [row[:] for row in confusion_record()[weights]['confusion']]
  matrix[i][j] = value
  return {weights: {'confusion': matrix}}


ZEROS = [[0] * 10 for _ in range(10)]
SHORT_ROW = [[1] * 10 for _ in range(3)] + [[1] * 9] + [[1] * 10 for _ in range(6)]


@pytest.mark.parametrize('changes,field', [
    ({'classes': [], 'ema': {'confusion': []}}, 'classes'),
    ({'ema': {'confusion': ZEROS}}, 'ema.confusion'),
    (with_cell(0, 0, '90'), 'ema.confusion[0][0]'),
    (with_cell(0, 1, -1), 'ema.confusion[0][1]'),
    (with_cell(2, 2, 90.0), 'ema.confusion[2][2]'),
    (with_cell(2, 3, float('nan')), 'ema.confusion[2][3]'),
    (with_cell(4, 4, True), 'ema.confusion[4][4]'),
    (with_cell(9, 0, -3, weights='raw'), 'raw.confusion[9][0]'),
    ({'ema': {'confusion': SHORT_ROW}}, 'ema.confusion[3]'),
    ({'ema': {'confusion': SHORT_ROW[:9]}}, 'ema.confusion'),
    ({'ema': {'confusion': ZEROS[0]}}, 'ema.confusion[0]'),
    ({'ema': [1, 2]}, 'ema.confusion'),
    ({'classes': list(range(10))}, 'classes'),
    ({'classes': list('abcdefghia')}, 'classes'),
    ({'classes': list('abc')}, 'classes'),
    ({'step': '10000'}, 'step'),
    ({'step': True}, 'step'),
    ({'step': -1}, 'step'),
    ({'checkpoint': 10000}, 'checkpoint'),
    ({'tta': None}, 'tta'),
    ({'ema': {'confusion': confusion_record()['ema']['confusion'], 'per_class': [1.0] * 10}},
     'ema.per_class'),
    ({'raw': {'confusion': confusion_record()['raw']['confusion'], 'per_class': [0.9] * 9}},
     'raw.per_class'),
])
def test_a_malformed_confusion_line_is_refused_with_its_field(tmp_path, changes, field):
  write_run(tmp_path, 'tutorial', [])
  path = tmp_path / 'eval' / cifar10_run.CONFUSION_FILE
  path.write_text(json.dumps(confusion_record(step=5000)) + '\n'
                  + json.dumps(confusion_record(**changes)) + '\n')
  with pytest.raises(cifar10_results.ResultsError,
                     match=re.escape(f'{path}, line 2: {field} is ')) as raised:
    cifar10_results.read_confusion(str(tmp_path))
  assert '\n' not in str(raised.value)


@pytest.mark.parametrize('line,field', [
    ({key: value for key, value in confusion_record().items() if key != 'ema'}, 'ema'),
    ({key: value for key, value in confusion_record().items() if key != 'step'}, 'step'),
    ([1, 2, 3], 'the line'),
])
def test_a_confusion_line_without_a_field_is_refused(tmp_path, line, field):
  write_run(tmp_path, 'tutorial', [])
  path = tmp_path / 'eval' / cifar10_run.CONFUSION_FILE
  path.write_text(json.dumps(line) + '\n')
  with pytest.raises(cifar10_results.ResultsError,
                     match=re.escape(f'{path}, line 1: {field} is ')):
    cifar10_results.read_confusion(str(tmp_path))


def test_the_line_cifar10_eval_writes_is_read_back(tmp_path):
  write_run(tmp_path, 'tutorial', [])
  ema = np.diag(np.arange(1, 11, dtype=np.int64)) + 2
  raw = np.zeros((10, 10), np.int64)
  raw[:, 0] = 7  # a model that always answers the first class: zero rows elsewhere
  metrics = {'step': 20, 'checkpoint': 'ckpt-20', 'checkpoint_digest': None, 'tta': 'flip',
             'confusion': {'ema': ema.tolist(), 'raw': raw.tolist()}}
  cifar10_run.append_json_line(str(tmp_path / 'eval' / cifar10_run.CONFUSION_FILE),
                               cifar10_eval.confusion_line(metrics))
  step, classes, matrix = cifar10_results.read_confusion(str(tmp_path), weights='raw')
  assert (step, len(classes), matrix) == (20, 10, raw.tolist())
  assert cifar10_results.read_confusion(str(tmp_path))[2] == ema.tolist()


def test_results_with_a_malformed_confusion_line_print_one_error_line(tmp_path):
  write_run(tmp_path / 'tuto', 'tutorial', [(10000, 0.8141, 600.0)])
  path = tmp_path / 'tuto' / 'eval' / cifar10_run.CONFUSION_FILE
  path.write_text(json.dumps(confusion_record(ema={'confusion': ZEROS})) + '\n')
  values, _ = cifar10_flags.parse(cifar10_results.define_flags, [
      f'--runs={tmp_path / "tuto"}', f'--out_dir={tmp_path / "out"}',
      f'--confusion={tmp_path / "tuto"}'])
  error = cifar10_results.run(values)
  assert error.startswith(f'error: {path}, line 1: ema.confusion is ')
  assert len(error.splitlines()) == 1
  assert not os.path.exists(tmp_path / 'out')  # Refused before anything is written.
