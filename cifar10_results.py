"""Collects evaluated runs into a markdown table and an accuracy-versus-cost plot.

    python cifar10_results.py --runs=runs/tutorial,runs/alex4 --out_dir=docs

Each run is a --train_dir whose checkpoints cifar10_eval.py evaluated: the model comes from
its config.json, the accuracies from <run>/eval/results.jsonl (one line per evaluated
checkpoint), params and MFLOPs from cifar10_model's counting. Writes results.md (model,
recipe, input side, params, MFLOPs, EMA precision @ 1 at 10,000 steps and at the last
evaluated step, with flip test-time augmentation when <run>/eval_flip holds it, training wall
time), results.png (precision against MFLOPs and against parameters, Pareto front marked, the
study's published figures as hollow markers), curves.png (each run of --runs: precision against
step and against training time) and, with --confusion=RUN, confusion.png (that run's newest
confusion matrix, from its eval/confusion.jsonl).
"""

import dataclasses
import math
import os
import sys

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

import cifar10_config
import cifar10_flags
import cifar10_frontier
import cifar10_model
import cifar10_records
import cifar10_run
import cifar10_scoring
import cifar10_sizes
import models


# The study's published EMA precision @ 1 (%) at 10,000 steps (docs/reference.md).
STUDY_PRECISION_10K = {
    'tutorial': 81.4, 'alex0': 82.2, 'alex1': 81.8, 'alex2': 81.4, 'alex3': 81.2,
    'alex4': 81.2, 'nin0': 70.9, 'nin1': 69.7, 'nin2': 74.2, 'squeeze0': 63.9,
    'squeeze1': 66.0,
}
STUDY_STEP = 10000


@dataclasses.dataclass(frozen=True)
class RunResult:
  """One evaluated training run."""
  name: str
  model: str
  params: int
  flops: int
  precision_by_step: dict  # step -> EMA precision @ 1 (fraction)
  train_seconds: float  # wall time of training up to the last evaluated step
  recipe: str = 'study'
  image_size: int = 24
  flip_by_step: dict = dataclasses.field(default_factory=dict)  # the same with --tta=flip
  seconds_by_step: dict = dataclasses.field(default_factory=dict)  # training seconds

  def time_to(self, precision):
    """(step, training seconds) of the first evaluated checkpoint whose EMA precision @ 1
    reaches `precision` (a fraction), or None."""
    for step in sorted(self.precision_by_step):
      if self.precision_by_step[step] >= precision:
        return step, self.seconds_by_step[step]
    return None

  @property
  def final_step(self):
    return max(self.precision_by_step)

  @property
  def final_precision(self):
    return self.precision_by_step[self.final_step]


class ResultsError(ValueError):
  """A results.jsonl, confusion.jsonl or results.md that cannot be reported."""


def read_run(train_dir, eval_dir=None):
  """Reads one run's config, counts and evaluation results.

  Raises:
    FileNotFoundError: the run has no config.json or no results.jsonl.
    ResultsError: results.jsonl is empty or holds a line that is not an eval result.
  """
  config = cifar10_run.read_config(train_dir)
  if config is None:
    raise FileNotFoundError(f'{train_dir} has no {cifar10_run.CONFIG_FILE}')
  path = os.path.join(eval_dir or cifar10_run.default_eval_dir(train_dir, 'test'),
                      cifar10_run.RESULTS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: run cifar10_eval.py --checkpoint_dir='
                            f'{train_dir} first')
  lines = _read_results(path, train_dir)
  flip = os.path.join(cifar10_run.default_eval_dir(train_dir, 'test', 'flip'),
                      cifar10_run.RESULTS_FILE)
  flip_lines = _read_results(flip, train_dir) if eval_dir is None and os.path.exists(flip) else []
  rows = cifar10_model.count_model(models.build(
      config.model, config.image_size, widths=cifar10_model.parse_widths(config.widths)))
  return RunResult(name=os.path.basename(os.path.normpath(train_dir)), model=config.model,
                   params=sum(r.params for r in rows), flops=sum(r.flops for r in rows),
                   precision_by_step={step: precision for step, precision, _ in lines},
                   train_seconds=max(lines)[2], recipe=config.recipe,
                   image_size=config.image_size,
                   flip_by_step={step: precision for step, precision, _ in flip_lines},
                   seconds_by_step={step: seconds for step, _, seconds in lines})


def _read_results(path, train_dir):
  """The checked (step, EMA precision, seconds) of each line of one results.jsonl."""
  return _checked_lines(path, train_dir, _result_fields, 'a cifar10_eval.py result')


def _checked_lines(path, train_dir, check, what):
  """check(value, where) of each line of a JSON Lines file of cifar10_eval.py's, in file order.

  One loop for every such file, so each reports an unreadable file, a line that is not JSON
  and an empty file alike; `check` raises ResultsError for a line of the wrong shape.

  Raises:
    ResultsError: the file is unreadable or empty, or a line is not JSON or fails `check`.
  """
  try:
    lines = [check(value, f'{path}, line {number}')
             for number, value in cifar10_run.json_lines(path)]
  except (OSError, UnicodeDecodeError) as e:
    raise ResultsError(f'{path} is unreadable ({type(e).__name__}: {e}): it must be the '
                       f'{os.path.basename(path)} that cifar10_eval.py wrote.') from e
  except ResultsError:
    raise  # A line of the wrong shape: `check` names it.
  except ValueError as e:  # A line that is not JSON (json_lines names it).
    raise ResultsError(f'{e}: not {what}; delete the line or evaluate the run again.') from e
  if not lines:
    raise ResultsError(f'{path} holds no evaluated checkpoint: run cifar10_eval.py '
                       f'--checkpoint_dir={train_dir} first')
  return lines


def _result_fields(result, where):
  """(step, EMA precision, training seconds) of one parsed results.jsonl line, each checked.

  Raises:
    ResultsError: not a JSON object of cifar10_eval.py's, or a value out of its range.
  """
  try:
    step, precision, seconds = (result['step'], result['precision_ema'],
                                result['train_seconds'])
  except (ValueError, KeyError, TypeError) as e:
    raise ResultsError(f'{where}: not a cifar10_eval.py result ({e!r}); delete the line or '
                       'evaluate the run again.') from e
  numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                for v in (step, precision, seconds))
  if not (numbers and _is_count(step) and 0.0 <= precision <= 1.0
          and math.isfinite(seconds) and seconds >= 0.0):
    raise ResultsError(f'{where}: step {step!r}, precision_ema {precision!r} and '
                       f'train_seconds {seconds!r} must be a step >= 0, a fraction in [0, 1] '
                       'and seconds >= 0; delete the line or evaluate the run again.')
  return step, precision, seconds


def _is_count(value):
  """Whether a parsed JSON value is a step or an image count: an int >= 0 that fits int64
  (JSON's true and false parse as bools, which Python counts as ints)."""
  return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def read_table(path):
  """The rows of a results.md this tool wrote before (this format or the study-only one
  without recipe and input columns), as RunResults: runs whose folders are gone keep their
  row when the table is written again (`--previous`).

  Raises:
    ResultsError: the file is not such a table.
  """
  try:
    with open(path, encoding='utf-8') as f:
      rows = [[cell.strip() for cell in line.strip().strip('|').split('|')]
              for line in f if line.startswith('|') and not line.startswith('|---')]
    header, rows = rows[0], rows[1:]
    results = []
    for row in rows:
      cells = dict(zip(header, row))
      last = int(cells.get('last step', f'{STUDY_STEP}').replace(',', ''))
      precision = float(cells.get('at last step') or cells[f'@{STUDY_STEP:,}']) / 100
      by_step = {last: precision}
      if cells.get(f'@{STUDY_STEP:,}'):
        by_step[STUDY_STEP] = float(cells[f'@{STUDY_STEP:,}']) / 100
      flip = cells.get('flip TTA')
      results.append(RunResult(
          name=cells['run'], model=cells['model'], params=int(cells['params'].replace(',', '')),
          flops=round(float(cells['MFLOPs']) * 1e6), precision_by_step=by_step,
          train_seconds=60 * float(cells['wall time'].split()[0]),
          recipe=cells.get('recipe', 'study'),
          image_size=int(cells.get('input', '24x24').split('x')[0]),
          flip_by_step={last: float(flip) / 100} if flip else {}))
  except (OSError, UnicodeDecodeError, IndexError, KeyError, ValueError) as e:
    raise ResultsError(f'{path} is not a results table of cifar10_results.py ({type(e).__name__}: '
                       f'{e})') from e
  return results


def markdown_table(results, target=None):
  """One row per run, by cost: EMA precision @ 1 at 10,000 steps and at the last evaluated
  step (with flip test-time augmentation where evaluated), and the study's figure at 10k
  steps (when it published one) with our difference to it. With `target` (a fraction), a
  last column gives when each run first reached it (RunResult.time_to)."""
  header = ['run', 'model', 'recipe', 'input', 'params', 'MFLOPs', f'@{STUDY_STEP:,}',
            'last step', 'at last step', 'flip TTA', f'study @{STUDY_STEP:,}', 'difference',
            'wall time'] + ([] if target is None else [f'first at {100 * target:g} %'])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  percent = lambda value: '' if value is None else f'{100 * value:.2f}'
  for r in sorted(results, key=lambda r: (r.flops, r.name)):
    ours = r.precision_by_step.get(STUDY_STEP)
    study = STUDY_PRECISION_10K.get(r.model) if r.image_size == 24 else None
    cells = [r.name, r.model, r.recipe, f'{r.image_size}x{r.image_size}', f'{r.params:,}',
             f'{r.flops / 1e6:.2f}', percent(ours), f'{r.final_step:,}',
             percent(r.final_precision), percent(r.flip_by_step.get(r.final_step)),
             '' if study is None else f'{study:.1f}',
             '' if study is None or ours is None else f'{100 * ours - study:+.2f}',
             f'{r.train_seconds / 60:.0f} min']
    if target is not None:
      reached = r.time_to(target)
      cells.append('not reached' if reached is None else
                   f'step {reached[0]:,}, {reached[1]:.0f} s')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


# Label offsets (points) tried in turn until a label overlaps none placed before it.
LABEL_OFFSETS = [(4, 4)] + [(dx, dy) for step in range(1, 7) for dy in (10 * step, -10 * step)
                            for dx in (4, -4)]


def _spread_labels(figure, label_groups):
  """Moves each point's label to the first offset where it overlaps no earlier label of its group.

  Runs whose costs and accuracies are close (the ~81 % cluster) would otherwise print their
  names on top of each other; a moved label gets a thin line back to its point. One group per
  axis; the figure is laid out once for all of them.
  """
  figure.canvas.draw()  # Lays out the axes: before that, labels have no extent.
  renderer = figure.canvas.get_renderer()
  for labels in label_groups:
    _spread_group(renderer, labels)


def _spread_group(renderer, labels):
  placed = []
  for label in sorted(labels, key=lambda a: (-a.xy[1], a.xy[0])):
    for dx, dy in LABEL_OFFSETS:
      label.xyann = (dx, dy)
      label.set_horizontalalignment('left' if dx > 0 else 'right')
      box = label.get_window_extent(renderer).expanded(1.05, 1.1)
      if not any(box.overlaps(other) for other in placed):
        break
    else:  # No free place: keep the first one.
      label.xyann = LABEL_OFFSETS[0]
      label.set_horizontalalignment('left')
      box = label.get_window_extent(renderer)
    if label.xyann != LABEL_OFFSETS[0]:
      label.axes.annotate('', label.xy, xytext=label.xyann, textcoords='offset points',
                          arrowprops={'arrowstyle': '-', 'color': '0.6', 'lw': 0.5})
    placed.append(box)


def _pyplot():
  """matplotlib's pyplot on the file-only Agg backend (imported when a plot is drawn)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _label(result, results):
  """A point's label: the model, with the recipe when not the study's; the run's name when
  two runs would share that label."""
  def plain(r):
    return r.model if r.recipe == 'study' else f'{r.model} ({r.recipe})'
  shared = sum(plain(r) == plain(result) for r in results) > 1
  return result.name if shared else plain(result)


def plot(results, path):
  """Precision @ 1 against MFLOPs and against params; Pareto-front runs ringed and joined,
  the study's published figure of each model it measured as a hollow marker."""
  plt = _pyplot()
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(1, 2, figsize=(15, 7), sharey=True)
  axis_labels = []
  costs = ((axes[0], "MFLOPs (at the run's input size)", lambda r: r.flops / 1e6),
           (axes[1], 'parameters (millions)', lambda r: r.params / 1e6))
  published = {}  # model -> (run, figure): one hollow marker per model the study measured
  for r in results:
    if r.image_size == 24 and r.model in STUDY_PRECISION_10K:
      published.setdefault(r.model, (r, STUDY_PRECISION_10K[r.model]))
  for axis, cost_name, cost_of in costs:
    points = [(cost_of(r), 100 * r.final_precision) for r in results]
    study = [r.recipe == 'study' for r in results]
    for chosen, colour, name in ((True, 'tab:blue', "ours, the study's recipe"),
                                 (False, 'tab:green', 'ours, a newer recipe')):
      shown = [point for point, flag in zip(points, study) if flag == chosen]
      if shown:
        axis.scatter(*zip(*shown), color=colour, s=36, zorder=3, label=name)
    if published:
      axis.scatter([cost_of(r) for r, _ in published.values()],
                   [figure_ for _, figure_ in published.values()], facecolors='none',
                   edgecolors='tab:blue', s=36, zorder=3, label='the study (published, 10k)')
    labels = [axis.annotate(_label(r, results), point, textcoords='offset points',
                            xytext=(4, 4), fontsize=9)
              for r, point in zip(results, points)]
    front = sorted(points[i] for i in cifar10_frontier.pareto_front(points))
    axis.plot(*zip(*front), color='tab:orange', marker='o', markersize=13, fillstyle='none',
              label='Pareto front', zorder=2)
    axis.set_xscale('log')
    axis.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    axis.xaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
    axis.xaxis.set_minor_formatter(ticker.NullFormatter())
    axis.margins(x=0.12, y=0.1)
    axis.set_xlabel(cost_name)
    axis.grid(True, which='both', alpha=0.3)
    axis.legend(loc='lower right')
    axis_labels.append(labels)
  axes[0].set_ylabel('EMA precision @ 1 (%), last evaluated step')
  figure.tight_layout()
  _spread_labels(figure, axis_labels)
  figure.savefig(path, dpi=90)
  plt.close(figure)


def plot_curves(curves, path):
  """EMA precision @ 1 of each run against its step and against its training seconds.

  Args:
    curves: {run name: RunResult}; runs with a single evaluated checkpoint show as a dot.
  """
  plt = _pyplot()
  figure, axes = plt.subplots(1, 2, figsize=(15, 6), sharey=True)
  for name, r in sorted(curves.items()):
    steps = sorted(r.precision_by_step)
    precision = [100 * r.precision_by_step[s] for s in steps]
    line, = axes[0].plot(steps, precision, marker='.', label=name)
    if all(s in r.seconds_by_step for s in steps):
      axes[1].plot([r.seconds_by_step[s] / 60 for s in steps], precision, marker='.',
                   color=line.get_color())
  axes[0].set_xlabel('step (batches of 128)')
  axes[1].set_xlabel('training wall time (minutes)')
  axes[0].set_ylabel('EMA precision @ 1 (%), test set')
  for axis in axes:
    axis.grid(True, alpha=0.3)
  axes[0].legend(fontsize=8, loc='lower right')
  figure.tight_layout()
  figure.savefig(path, dpi=90)
  plt.close(figure)


def read_confusion(train_dir, weights='ema'):
  """(step, class names, confusion matrix as lists) of the newest line of the run's
  <eval>/confusion.jsonl (cifar10_eval.py), every line checked by check_confusion_line.

  Raises:
    FileNotFoundError: the run has no confusion.jsonl.
    ResultsError: it is unreadable or empty, or a line is not JSON or not of cifar10_eval.py.
  """
  path = os.path.join(cifar10_run.default_eval_dir(train_dir, 'test'),
                      cifar10_run.CONFUSION_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: evaluate the run with this version of '
                            f'cifar10_eval.py (--checkpoint_dir={train_dir} --run_once)')
  lines = _checked_lines(path, train_dir,
                         lambda line, where: check_confusion_line(line, where, weights),
                         'a cifar10_eval.py confusion line')
  newest = max(lines, key=lambda line: line['step'])
  return newest['step'], newest['classes'], newest[weights]['confusion']


CONFUSION_WEIGHTS = ('ema', 'raw')  # the scorings of a checkpoint that cifar10_eval.py writes
_MISSING = object()  # a field a line does not hold


def _confusion_error(where, field, value, expected):
  """The ResultsError of one confusion.jsonl field: where, which field, its value (shortened:
  a matrix would fill the screen) and what cifar10_eval.py writes there."""
  shown = 'missing' if value is _MISSING else repr(value)
  shown = shown if len(shown) <= 60 else shown[:57] + '...'
  return ResultsError(f'{where}: {field} is {shown}, expected {expected}; delete the line or '
                      'evaluate the run again.')


def check_confusion_line(line, where, weights='ema'):
  """One parsed confusion.jsonl line (cifar10_eval.confusion_line), checked whole.

  Checked here, before any of it is used, so that plot_confusion never meets a matrix it
  cannot draw (empty, all zero, a cell that is not a count) and a damaged line is named with
  its field instead of surfacing as a traceback.

  Args:
    line: the parsed JSON value of the line.
    where: '<path>, line <number>', for the message.
    weights: the scoring the caller reads ('ema' or 'raw'): the line must hold it.

  Returns:
    `line`, unchanged.

  Raises:
    ResultsError: naming `where`, the first field that is not as cifar10_eval.py writes it,
      and what it must be.
  """
  if not isinstance(line, dict):
    raise _confusion_error(where, 'the line', line, 'a JSON object of cifar10_eval.py')
  if not _is_count(line.get('step', _MISSING)):
    raise _confusion_error(where, 'step', line.get('step', _MISSING), 'an int >= 0')
  for key, allowed, expected in (('checkpoint', (str,), 'a string'), ('tta', (str,), 'a string'),
                                 ('checkpoint_digest', (str, type(None)), 'a string or null')):
    if key in line and not isinstance(line[key], allowed):
      raise _confusion_error(where, key, line[key], expected)
  classes = line.get('classes', _MISSING)
  if not (isinstance(classes, list) and len(classes) == cifar10_records.NUM_CLASSES
          and all(isinstance(name, str) for name in classes)
          and len(set(classes)) == len(classes)):
    raise _confusion_error(where, 'classes', classes,
                           f'a list of {cifar10_records.NUM_CLASSES} distinct class names')
  if weights not in line:
    raise _confusion_error(where, weights, _MISSING,
                           f'the confusion matrix of the {weights} weights')
  for name in CONFUSION_WEIGHTS:
    if name in line:
      _check_scoring(line[name], where, name, len(classes))
  return line


def _check_scoring(scoring, where, name, size):
  """Checks one weights' entry of a confusion.jsonl line: a size x size matrix of counts
  holding at least one image, and per_class (when present) its rows' diagonal shares.

  Raises:
    ResultsError: naming `where`, the field (down to the cell) and what it must be.
  """
  field = f'{name}.confusion'
  matrix = scoring.get('confusion', _MISSING) if isinstance(scoring, dict) else _MISSING
  if not (isinstance(matrix, list) and len(matrix) == size):
    raise _confusion_error(where, field, matrix, f'{size} rows, one per class')
  for i, row in enumerate(matrix):
    if not (isinstance(row, list) and len(row) == size):
      raise _confusion_error(where, f'{field}[{i}]', row, f'a row of {size} counts')
    for j, count in enumerate(row):
      if not _is_count(count):
        raise _confusion_error(where, f'{field}[{i}][{j}]', count, 'an image count (int >= 0)')
  if not any(map(any, matrix)):
    raise _confusion_error(where, field, matrix, 'the counts of at least one image')
  per_class = scoring.get('per_class', _MISSING)
  if per_class is not _MISSING:
    shares = cifar10_scoring.per_class(matrix)
    if not (isinstance(per_class, list) and len(per_class) == size and all(
        isinstance(got, (int, float)) and not isinstance(got, bool)
        and math.isclose(got, share, abs_tol=1e-9) for got, share in zip(per_class, shares))):
      raise _confusion_error(where, f'{name}.per_class', per_class,
                             f'{size} shares, each row\'s diagonal over its sum')


def plot_confusion(step, classes, matrix, title, path):
  """The confusion matrix as a heat map, each cell's count written in it; the row labels
  give each class's precision @ 1."""
  plt = _pyplot()
  figure, axis = plt.subplots(figsize=(9, 8))
  axis.imshow(matrix, cmap='Blues')
  largest = max(max(row) for row in matrix)
  for i, row in enumerate(matrix):
    for j, count in enumerate(row):
      axis.text(j, i, str(count), ha='center', va='center', fontsize=9,
                color='white' if count > largest / 2 else 'black')
  rows = [f'{name} ({100 * row[i] / max(sum(row), 1):.1f} %)'
          for i, (name, row) in enumerate(zip(classes, matrix))]
  axis.set_xticks(range(len(classes)), classes, rotation=45, ha='right')
  axis.set_yticks(range(len(classes)), rows)
  axis.set_xlabel('predicted class')
  axis.set_ylabel('true class (its precision @ 1)')
  total = sum(map(sum, matrix))
  correct = sum(matrix[i][i] for i in range(len(matrix)))
  axis.set_title(f'{title}, step {step:,}: {100 * correct / total:.2f} % of {total:,} test '
                 'images')
  figure.tight_layout()
  figure.savefig(path, dpi=90)
  plt.close(figure)


def run(values):
  """Writes the table and plots as the flag values say; returns what sys.exit takes.
  --compressed alone (no --runs) writes sizes.md and sizes.png only."""
  if not values['runs'] and values['compressed']:
    try:
      os.makedirs(values['out_dir'], exist_ok=True)
      print(write_sizes(values['compressed'], values['out_dir'], values['previous_sizes']))
    except OSError as e:
      return f'error: cannot write sizes.md into --out_dir={values["out_dir"]} ({e})'
    except cifar10_sizes.SizeError as e:
      return f'error: {e}'
    return None
  try:
    if not values['runs']:
      raise ResultsError('--runs is empty: pass the comma-separated --train_dir of each run '
                         '(or --compressed alone for the size table)')
    results = [read_run(run) for run in values['runs']]
    if values['previous']:  # Rows of runs not given again, e.g. folders since deleted.
      names = {r.name for r in results}
      results += [r for r in read_table(values['previous']) if r.name not in names]
  except (FileNotFoundError, ResultsError, cifar10_config.ConfigError) as e:
    return f'error: {e}'
  out_dir = values['out_dir']
  table = markdown_table(results, values['target'])
  curves = {os.path.basename(os.path.normpath(run)): result
            for run, result in zip(values['runs'], results)}
  confusion_run = values['confusion']
  try:
    confusion = read_confusion(confusion_run) if confusion_run else None
  except (FileNotFoundError, ResultsError) as e:
    return f'error: {e}'
  try:
    os.makedirs(out_dir, exist_ok=True)
    cifar10_run.write_whole(os.path.join(out_dir, 'results.md'), table + '\n')
    plot(results, os.path.join(out_dir, 'results.png'))
    plot_curves(curves, os.path.join(out_dir, 'curves.png'))
    if confusion:
      title = os.path.basename(os.path.normpath(confusion_run))
      plot_confusion(*confusion, title, os.path.join(out_dir, 'confusion.png'))
    if values['latency']:
      frontier = write_frontier(results, values['latency'], values['latency_threads'], out_dir)
    if values['compressed']:
      sizes = write_sizes(values['compressed'], out_dir, values['previous_sizes'])
  except OSError as e:
    return f'error: cannot write the table and plots into --out_dir={out_dir} ({e})'
  except (cifar10_frontier.LatencyError, cifar10_sizes.SizeError) as e:
    return f'error: {e}'
  print(table)
  if values['latency']:
    print(f'\n{frontier}')
  if values['compressed']:
    print(f'\n{sizes}')
  return None


def write_sizes(report_files, out_dir, previous=None):
  """sizes.md and sizes.png of compress/quantize.py reports (and the rows of a previous
  sizes.md that they do not give again); the table."""
  found = cifar10_sizes.points(report_files)
  if previous:
    found = cifar10_sizes.merge(found, cifar10_sizes.read_table(previous))
  table = cifar10_sizes.table(found)
  cifar10_run.write_whole(os.path.join(out_dir, 'sizes.md'), table + '\n')
  cifar10_sizes.plot(found, os.path.join(out_dir, 'sizes.png'), _pyplot)
  return table


def write_frontier(results, latency_file, threads, out_dir):
  """frontier.md and frontier.png of the runs and a bench/latency.py file; the table."""
  latency = cifar10_frontier.read_latency(latency_file)
  found = cifar10_frontier.points([(r.name, r.model, r.final_precision) for r in results],
                                  latency, model_flops, threads)
  if not found:
    raise cifar10_frontier.LatencyError(
        f'--latency={latency_file} times no model of --runs and no scored run')
  table = cifar10_frontier.table(found)
  cifar10_run.write_whole(os.path.join(out_dir, 'frontier.md'), table + '\n')
  cifar10_frontier.plot(found, os.path.join(out_dir, 'frontier.png'), threads, _pyplot)
  return table


def model_flops(model, widths=''):
  """FLOPs of a model (narrowed as a slimmed run's `widths` say) at the zoo's input side for
  it (bench/latency.py's: 32 for the budget family, 24 for the study's models)."""
  size = 32 if model.startswith('budget') else 24
  with cifar10_model.shapes_only():
    built = models.build(model, size, widths=cifar10_model.parse_widths(widths))
  return sum(r.flops for r in cifar10_model.count_model(built))


def main(argv):
  sys.exit(run(cifar10_flags.main_values(argv, _FLAGS)[0]))


def define_flags(flag_values=flags.FLAGS):
  """This program's flags; returns {name: FlagHolder}."""
  return dict(
      runs=flags.DEFINE_list('runs', None, 'Comma-separated train dirs evaluated by '
                             'cifar10_eval.py (optional with --compressed).',
                             flag_values=flag_values),
      out_dir=flags.DEFINE_string('out_dir', 'docs', 'Where results.md and results.png go.',
                              flag_values=flag_values),
      previous=flags.DEFINE_string('previous', None, 'A results.md written before: its rows '
                                   'of runs not in --runs are kept (their folders may be gone).',
                                   flag_values=flag_values),
      confusion=flags.DEFINE_string('confusion', None, 'A run evaluated by cifar10_eval.py: '
                                    'draw its newest confusion matrix (EMA) as confusion.png.',
                                    flag_values=flag_values),
      latency=flags.DEFINE_string('latency', None, 'A bench/latency.py JSON file: also write '
                                  'frontier.md and frontier.png (precision against batch-1 '
                                  'latency and MFLOPs).', flag_values=flag_values),
      latency_threads=flags.DEFINE_integer('latency_threads', 1, 'Which thread count of '
                                           '--latency the frontier uses.', lower_bound=1,
                                           flag_values=flag_values),
      compressed=flags.DEFINE_list('compressed', None, 'compress/quantize.py reports '
                                   '(quant_report.json): also write sizes.md and sizes.png, '
                                   'precision against file size of each compressed form and '
                                   'its float32 run.', flag_values=flag_values),
      previous_sizes=flags.DEFINE_string('previous_sizes', None, 'A sizes.md written before: '
                                         'its rows of the runs and stages --compressed does '
                                         'not give again (folders since deleted) are kept.',
                                         flag_values=flag_values),
      target=flags.DEFINE_float('target', None, 'A precision @ 1 (fraction, e.g. 0.814): add '
                                'a column with the step and training seconds at which each '
                                'run first reached it.', lower_bound=0.0, upper_bound=1.0,
                                flag_values=flag_values),
  )


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
