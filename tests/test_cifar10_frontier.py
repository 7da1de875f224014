"""Tests of the frontier: reading bench/latency.py's file, its points, table and plot, and
cifar10_results.py --latency."""

import json

import pytest

import cifar10_flags
import cifar10_frontier
import cifar10_results
from test_cifar10_results import write_run


def latency_file(path):
  """A bench/latency.py result by hand: two models at initial weights, one scored run."""
  timings = []
  for name, runtime, ms in (('tutorial', 'tflite_float', 0.5), ('tutorial', 'onnx', 0.4),
                            ('tutorial', 'saved_model', 0.9), ('squeeze1', 'tflite_float', 0.3),
                            ('budget1_m20k', 'tflite_float', 0.6), ('budget1', 'onnx', 0.5),
                            ('budget1_m20k', 'tflite_int8', 0.2),
                            ('budget1_m20k', 'ours_int8', 1.5),
                            ('budget1_slim', 'tflite_float', 0.35)):
    timings += [{'name': name, 'runtime': runtime, 'batch': 1, 'threads': 1, 'ms_per_image': ms},
                {'name': name, 'runtime': runtime, 'batch': 32, 'threads': 1,
                 'ms_per_image': ms / 3}]
  path.write_text(json.dumps({
      'candidates': [{'kind': 'model', 'name': 'tutorial', 'model': 'tutorial'},
                     {'kind': 'model', 'name': 'squeeze1', 'model': 'squeeze1'},
                     {'kind': 'model', 'name': 'budget1', 'model': 'budget1'},
                     {'kind': 'run', 'name': 'budget1_m20k', 'model': 'budget1'},
                     {'kind': 'run', 'name': 'budget1_slim', 'model': 'budget1',
                      'widths': 'conv1_1=8'}],
      'timings': timings,
      'precision': [{'name': 'budget1_m20k', 'runtime': 'tflite_float', 'precision': 0.9025},
                    {'name': 'budget1_m20k', 'runtime': 'tflite_int8', 'precision': 0.9010},
                    {'name': 'budget1_m20k', 'runtime': 'ours_int8', 'precision': 0.9002},
                    {'name': 'budget1_slim', 'runtime': 'tflite_float', 'precision': 0.89}]}))
  return path


def test_pareto_front_by_hand():
  points = [(10, 80), (20, 85), (15, 79), (30, 84), (5, 70), (20, 85)]
  # (15, 79) loses to (10, 80); (30, 84) to (20, 85); the duplicate (20, 85) stays twice.
  assert cifar10_frontier.pareto_front(points) == [0, 1, 4, 5]


def test_a_point_faster_only_by_noise_is_not_on_the_front():
  # (median, slowest round), precision: a pruned model and its dense source of one
  # architecture (the measured case of bench/latency.json), and a truly faster third.
  points = [((0.127, 0.164), 85.35), ((0.152, 0.239), 90.16), ((0.100, 0.105), 80.0)]
  # The dense one's median 0.152 is within the pruned one's rounds (up to 0.164): the pruned
  # is not measurably faster, and less precise. 0.152 is beyond the third's slowest 0.105.
  assert cifar10_frontier.pareto_front(points) == [1, 2]
  # Equal precision, overlapping rounds: the lower median wins, never both lost.
  assert cifar10_frontier.pareto_front([((1.0, 1.3), 80.0), ((1.2, 1.5), 80.0)]) == [0]


def test_points_take_the_best_run_of_a_model_and_the_fastest_runtime_of_a_form(tmp_path):
  latency = cifar10_frontier.read_latency(latency_file(tmp_path / 'latency.json'))
  results = [('tuto_a', 'tutorial', 0.81), ('tuto_b', 'tutorial', 0.83), ('nin', 'nin2', 0.77),
             ('budget1_m20k', 'budget1', 0.9025)]
  found = {p.label: p for p in cifar10_frontier.points(
      results, latency, lambda model, widths: 10**6 // (2 if widths else 1))}
  # squeeze1 has no run in the results, nin2 no latency: neither is a point; budget1 at its
  # initial weights is left out for the timed run of it.
  assert sorted(found) == ['budget1_m20k float', 'budget1_m20k int8', 'budget1_slim float',
                           'tutorial']
  assert found['budget1_slim float'].flops == 10**6 // 2  # counted at its own widths
  assert found['budget1_slim float'].widths == 'conv1_1=8'
  tutorial = found['tutorial']  # onnx is its fastest float runtime at batch 1
  assert (tutorial.runtime, tutorial.ms, tutorial.precision, tutorial.source) == (
      'onnx', 0.4, 0.83, 'tuto_b')
  int8 = found['budget1_m20k int8']  # TFLite beats our runner; its own precision
  assert (int8.runtime, int8.ms, int8.precision) == ('tflite_int8', 0.2, 0.9010)
  table = cifar10_frontier.table(list(found.values()))
  rows = [line for line in table.splitlines()[2:]]
  assert rows[0].startswith('| budget1_m20k int8 |') and rows[0].endswith('| yes |')
  assert '0.400 (study: 44 ms)' in table  # the study's ms/inference beside ours
  # tutorial (0.4 ms, 83 %) loses to budget1 int8 (0.2 ms, 90.1 %): not on the front.
  assert next(r for r in rows if r.startswith('| tutorial |')).endswith('|  |')


@pytest.mark.parametrize('text', ['{', '[]', '{"candidates": [{"kind": "model"}]}'])
def test_a_file_not_of_bench_latency_is_named(tmp_path, text):
  (tmp_path / 'latency.json').write_text(text)
  with pytest.raises(cifar10_frontier.LatencyError, match='is not a bench/latency.py result'):
    cifar10_frontier.read_latency(str(tmp_path / 'latency.json'))


def test_results_with_latency_write_the_frontier_table_and_plot(tmp_path):
  write_run(tmp_path / 'tuto', 'tutorial', [(10000, 0.814, 600.0)])
  write_run(tmp_path / 'budget1_m20k', 'budget1', [(20000, 0.9025, 2400.0)])
  values, _ = cifar10_flags.parse(cifar10_results.define_flags, [
      f'--runs={tmp_path / "tuto"},{tmp_path / "budget1_m20k"}', f'--out_dir={tmp_path / "out"}',
      f'--latency={latency_file(tmp_path / "latency.json")}'])
  assert cifar10_results.run(values) is None
  assert (tmp_path / 'out' / 'frontier.png').stat().st_size > 10_000
  table = (tmp_path / 'out' / 'frontier.md').read_text()
  assert '| tutorial | tutorial | float | onnx | 0.400 (study: 44 ms) | 37.75 | 81.40 |' in table
  values['latency'] = str(tmp_path / 'nowhere.json')
  assert 'nowhere.json is not a bench/latency.py result' in cifar10_results.run(values)
