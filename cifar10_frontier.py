"""Accuracy against what a deployed model costs: the frontier of precision and latency.

cifar10_results.py --latency=bench/latency.json draws it. Its points:
  - each model timed by bench/latency.py (at its initial weights: the latency of these runtimes
    does not depend on the weights' values) and present in the results (the best run of that
    model), unless a run of it was timed too: float, at the latency of its fastest float
    runtime, with that run's precision;
  - each run timed by bench/latency.py, in each form it was scored in (float, and int8 by
    TFLite or by our runner), with the precision that form measured on the test set.
A point's latency is milliseconds per image at batch 1 on --latency_threads threads: one
image at a time, as a camera or a request would come. The Pareto-optimal points are those no
other point beats on both latency (lower) and precision (higher), where a point is not slower
than another unless its median is above that other's slowest round: on a shared machine two
forms of one architecture (a pruned model and its dense source, whose kernels do the same
work) differ by noise, and noise must not put one on the front.
"""

import dataclasses
import json
import os

FLOAT_RUNTIMES = ('tflite_float', 'saved_model', 'onnx')
INT8_RUNTIMES = ('tflite_int8', 'ours_int8')

# The study's own figures, ms per inference with TensorFlow's C++ label_image on its machine
# (docs/reference.md): not comparable with ours in absolute terms, shown as its ranking.
STUDY_MS = {'tutorial': 44, 'squeeze1': 27, 'nin2': 90}


class LatencyError(ValueError):
  """The latency file is not one bench/latency.py wrote."""


@dataclasses.dataclass(frozen=True)
class Point:
  label: str  # what the plot and the table call it
  model: str
  form: str  # 'float' or 'int8'
  runtime: str  # the fastest of the form's runtimes at batch 1
  ms: float  # per image, batch 1: the median of the rounds
  flops: int
  precision: float  # fraction
  source: str  # where the precision comes from: a run's name
  slowest: float = None  # ms of the slowest round (None: ms)
  widths: str = ''  # a slimmed run's (cifar10_config.TrainConfig.widths), else ''

  @property
  def cost(self):
    """(median, slowest round): what pareto_front compares."""
    return self.ms, self.ms if self.slowest is None else self.slowest


def read_latency(path):
  """{candidate name: {'kind', 'model', 'widths' (a slimmed run's, else ''), 'ms':
  {(runtime, batch, threads): ms per image},
  'slowest': {same keys: ms of the slowest round}, 'precision': {runtime: fraction}}} of a
  bench/latency.py JSON file.

  Raises:
    LatencyError: the file is missing, not JSON, or not of that shape.
  """
  try:
    with open(path, encoding='utf-8') as f:
      report = json.load(f)
    candidates = {row['name']: {'kind': row['kind'], 'model': row['model'],
                                'widths': row.get('widths', ''), 'ms': {}, 'slowest': {},
                                'precision': {}} for row in report['candidates']}
    for timing in report['timings']:
      key = (timing['runtime'], int(timing['batch']), int(timing['threads']))
      median = float(timing['ms_per_image'])
      candidates[timing['name']]['ms'][key] = median
      candidates[timing['name']]['slowest'][key] = max(
          [median] + [float(ms) for ms in timing.get('ms_per_image_rounds', [])])
    for score in report['precision']:
      candidates[score['name']]['precision'][score['runtime']] = float(score['precision'])
  except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
    raise LatencyError(f'--latency={path} is not a bench/latency.py result ({e!r})') from e
  return candidates


def fastest(candidate, runtimes, threads):
  """(runtime, ms per image, ms of its slowest round) of the fastest of `runtimes` at batch 1
  (by the median), or None."""
  ms = candidate['ms']
  timed = [(ms[(r, 1, threads)], r) for r in runtimes if (r, 1, threads) in ms]
  if not timed:
    return None
  median, runtime = min(timed)
  return runtime, median, candidate['slowest'].get((runtime, 1, threads), median)


def points(results, latency, flops_of, threads=1):
  """The frontier's points.

  Args:
    results: (run name, model, final precision) of each evaluated run.
    latency: read_latency's dict.
    flops_of: (model name, widths) -> FLOPs at its input size (the latency candidates'
      sides; widths '' for the model as registered, a slimmed run's otherwise).
    threads: which thread count's figures.
  """
  best = {}  # model -> (precision, run name) of its best run
  for name, model, precision in results:
    best[model] = max(best.get(model, (precision, name)), (precision, name))
  timed_runs = {c['model'] for c in latency.values() if c['kind'] == 'run'}
  found = []
  for name, candidate in latency.items():
    model = candidate['model']
    if candidate['kind'] == 'model' and model in best and model not in timed_runs:
      timed = fastest(candidate, FLOAT_RUNTIMES, threads)
      if timed:
        runtime, ms, slowest = timed
        found.append(Point(model, model, 'float', runtime, ms, flops_of(model, ''),
                           *best[model], slowest=slowest))
    elif candidate['kind'] == 'run':
      for form, runtimes in (('float', FLOAT_RUNTIMES), ('int8', INT8_RUNTIMES)):
        scored = [r for r in runtimes if r in candidate['precision']]
        timed = fastest(candidate, scored, threads)
        if timed:
          runtime, ms, slowest = timed
          found.append(Point(f'{name} {form}', model, form, runtime, ms,
                             flops_of(model, candidate['widths']),
                             candidate['precision'][runtime], name, slowest=slowest,
                             widths=candidate['widths']))
  return found


def pareto_front(pairs):
  """Indices of the (cost, accuracy) pairs that no other beats on both cost (lower) and
  accuracy (higher).

  A cost may be a number or a (median, slowest) pair of a measured latency: then another
  point is not slower than this one when its median is at most this one's slowest, and beats
  it when it is also more accurate (or as accurate and faster by the median).
  """
  costs = [cost if isinstance(cost, tuple) else (cost, cost) for cost, _ in pairs]
  front = []
  for i, ((median, slowest), accuracy) in enumerate(zip(costs, (a for _, a in pairs))):
    dominated = any(
        m <= slowest and a >= accuracy and (a > accuracy or m < median)
        for j, ((m, _), (_, a)) in enumerate(zip(costs, pairs)) if j != i)
    if not dominated:
      front.append(i)
  return front


def table(found):
  """Markdown, fastest first: each point's latency, runtime, precision and whether it is on
  the front."""
  front = set(pareto_front([(p.cost, p.precision) for p in found]))
  lines = ['| point | model | form | fastest runtime | ms per image (batch 1) | MFLOPs | '
           'precision @ 1 | precision from | on the front |', '|' + '---|' * 9]
  for index, p in sorted(enumerate(found), key=lambda item: (item[1].ms, item[1].label)):
    study = (f' (study: {STUDY_MS[p.model]} ms)'
             if p.model in STUDY_MS and p.form == 'float' and not p.widths else '')
    lines.append(f'| {p.label} | {p.model} | {p.form} | {p.runtime} | {p.ms:.3f}{study} | '
                 f'{p.flops / 1e6:.2f} | {100 * p.precision:.2f} | {p.source} | '
                 f'{"yes" if index in front else ""} |')
  return '\n'.join(lines)


def plot(found, path, threads, pyplot):
  """Precision against batch-1 latency (log) and against MFLOPs, float and int8 points apart,
  the Pareto front (on latency) ringed and joined in both panels."""
  plt = pyplot()
  figure, axes = plt.subplots(1, 2, figsize=(15, 7), sharey=True)
  front = pareto_front([(p.cost, p.precision) for p in found])
  for axis, cost_name, cost in (
      (axes[0], f'ms per image, batch 1, {threads} thread(s), fastest runtime', lambda p: p.ms),
      (axes[1], 'MFLOPs (at the input size)', lambda p: p.flops / 1e6)):
    for form, marker, colour in (('float', 'o', 'tab:blue'), ('int8', 's', 'tab:red')):
      shown = [p for p in found if p.form == form]
      if shown:
        axis.scatter([cost(p) for p in shown], [100 * p.precision for p in shown],
                     marker=marker, color=colour, s=36, zorder=3, label=form)
    for p in found:
      axis.annotate(p.label, (cost(p), 100 * p.precision), textcoords='offset points',
                    xytext=(4, 4), fontsize=8)
    ringed = sorted((cost(found[i]), 100 * found[i].precision) for i in front)
    if axis is axes[0] and ringed:
      axis.plot(*zip(*ringed), color='tab:orange', marker='o', markersize=13,
                fillstyle='none', label='Pareto front (latency)', zorder=2)
    elif ringed:
      axis.scatter(*zip(*ringed), s=169, facecolors='none', edgecolors='tab:orange',
                   zorder=2, label='Pareto front (latency)')
    axis.set_xscale('log')
    axis.set_xlabel(cost_name)
    axis.grid(True, which='both', alpha=0.3)
    axis.legend(loc='lower right')
  axes[0].set_ylabel('precision @ 1 (%), 10,000 test images')
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=90)
  plt.close(figure)
