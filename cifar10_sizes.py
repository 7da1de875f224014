"""Accuracy against what a model weighs: precision and file size of every compressed form.

cifar10_results.py --compressed=<quant_report.json files> writes sizes.md and sizes.png from
the reports compress/quantize.py writes. Each report gives two points: its run in float32
(the run's parameters at 4 bytes, the float precision of the same weights; not for a QAT
run, whose unrounded weights no one ships) and its int8 file (the file's bytes on disk, the
integer path's precision). A point's stage says how it
was made: PTQ (calibrated ranges) or QAT (trained ranges, compress/qat.py), the weight bits
of its middle layers, pruned (sparse matrices in the file) and entropy-coded (lzma).
"""

import dataclasses
import json
import os

PRUNED_BELOW = 0.5  # a file whose weights take under this share of the dense int8 bytes
PRUNED_ZEROS = 0.7  # a model with at least this share of zero weights was pruned (rounding
# to 4 or 2 bits zeroes fewer: 2-bit's least-squared-error clip leaves most weights nonzero)


class SizeError(ValueError):
  """A report is not one compress/quantize.py wrote."""


@dataclasses.dataclass(frozen=True)
class SizePoint:
  run: str  # the run's folder name
  model: str
  stage: str  # 'float32', or e.g. 'pruned + 4-bit QAT + lzma'
  precision: float  # fraction
  bytes: int  # float32 weights, or the file on disk
  float32_bytes: int  # the dense float32 weights of the same model

  @property
  def ratio(self):
    return self.float32_bytes / self.bytes


def stage(report):
  """The stage name of a quantize report."""
  bits = sorted(set(report.get('weight_bits', {'': 8}).values()))
  middle = bits[0]  # The first and last layers may keep 8 bits; the rest set the name.
  trained = report.get('calibration') == 'trained ranges'
  breakdown = report.get('size_breakdown', {})
  if 'weight_zeros' in report:
    pruned = report['weight_zeros'] >= PRUNED_ZEROS
  elif middle < 8 and breakdown:  # Written before weight_zeros: a pruned model's positions
    # weigh about as much as its values; rounding's zeros cost a fraction of them.
    parts = {key: breakdown.get(key, {}).get('stored', 0) for key in ('positions', 'values')}
    pruned = parts['positions'] >= 0.5 * parts['values']
  else:  # Reports from before both: all 8-bit, so a small payload means sparse.
    pruned = report['bytes']['int8_sparse'] < PRUNED_BELOW * report['bytes']['int8_dense']
  name = f'{middle}-bit {"QAT" if trained else "PTQ"}'
  if pruned:
    name = f'pruned + {name}'
  if report.get('coding', 'none') != 'none':
    name += f' + {report["coding"]}'
  return name


def read_report(path):
  """[float32 SizePoint, int8 SizePoint] of a quant_report.json (the int8 one alone for a
  quantization-aware training run).

  Raises:
    SizeError: the file is missing, not JSON, or not a quantize report.
  """
  try:
    with open(path, encoding='utf-8') as f:
      report = json.load(f)
    run = os.path.basename(os.path.dirname(os.path.normpath(report['checkpoint'])))
    sizes, precision = report['bytes'], report['precision']
    common = dict(run=run, model=report['model'], float32_bytes=int(sizes['float32_dense']))
    quantized = SizePoint(stage=stage(report), precision=float(precision['int8']),
                          bytes=int(sizes['int8_file']), **common)
    if report.get('calibration') == 'trained ranges':  # A QAT run's float weights are no
      return [quantized]  # model anyone ships: its source is the float point.
    return [SizePoint(stage='float32', precision=float(precision['float']),
                      bytes=int(sizes['float32_dense']), **common), quantized]
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise SizeError(f'--compressed: {path} is not a compress/quantize.py report '
                    f'({type(e).__name__}: {e})') from e


def points(paths):
  """Every report's points, each once and each float32 run once (its first report's)."""
  found, seen = [], set()
  for path in paths:
    for point in read_report(path):
      key = point.run if point.stage == 'float32' else point
      if key not in seen:
        seen.add(key)
        found.append(point)
  return found


HEADER = ['model', 'run', 'stage', 'precision @ 1', 'bytes', 'smaller than float32']


def read_table(path):
  """The SizePoints of a sizes.md this module wrote before, so that the points of runs whose
  folders (and reports) are gone are kept when the table is written again. A row's float32
  size is its run's float32 row, else the float32 row of its model nearest to bytes x ratio
  (the ratio is printed to 0.1x only).

  Raises:
    SizeError: the file is missing or not such a table.
  """
  try:
    with open(path, encoding='utf-8') as f:
      rows = [[cell.strip() for cell in line.strip().strip('|').split('|')]
              for line in f if line.startswith('|') and not line.startswith('|---')]
    if rows[0] != HEADER:
      raise ValueError(f'its header is {rows[0]}, not {HEADER}')
    rows = [dict(zip(rows[0], row)) for row in rows[1:]]
    parsed = [(row['model'], row['run'].strip('`'), row['stage'],
               float(row['precision @ 1'].rstrip('%')) / 100, int(row['bytes'].replace(',', '')),
               float(row['smaller than float32'].rstrip('x'))) for row in rows]
    floats = {(model, run): size for model, run, stage, _, size, _ in parsed
              if stage == 'float32'}
    found = []
    for model, run, stage_name, precision, size, ratio in parsed:
      float32 = floats.get((model, run)) or min(
          (f for (m, _), f in floats.items() if m == model), key=lambda f: abs(f - size * ratio))
      found.append(SizePoint(run, model, stage_name, precision, size, float32))
  except (OSError, UnicodeDecodeError, IndexError, KeyError, ValueError) as e:
    raise SizeError(f'{path} is not a sizes.md of cifar10_results.py ({type(e).__name__}: '
                    f'{e})') from e
  return found


def merge(found, previous):
  """`found`, then the points of `previous` whose run and stage `found` does not hold."""
  given = {(p.run, p.stage) for p in found}
  return found + [p for p in previous if (p.run, p.stage) not in given]


def table(found):
  """The markdown table, each model's points from the largest file to the smallest."""
  lines = ['| ' + ' | '.join(HEADER) + ' |', '|---' * len(HEADER) + '|']
  for point in sorted(found, key=lambda p: (p.model, -p.bytes, -p.precision)):
    lines.append(f'| {point.model} | `{point.run}` | {point.stage} | {point.precision:.2%} | '
                 f'{point.bytes:,} | {point.ratio:.1f}x |')
  return '\n'.join(lines)


def plot(found, path, pyplot):
  """Precision against bytes (log scale), one colour per model, each point named by stage."""
  plt = pyplot()
  figure, axes = plt.subplots(figsize=(9, 5.5))
  models = sorted({p.model for p in found})
  colours = plt.get_cmap('tab10')
  for index, model in enumerate(models):
    mine = sorted((p for p in found if p.model == model), key=lambda p: p.bytes)
    axes.plot([p.bytes for p in mine], [100 * p.precision for p in mine], 'o',
              color=colours(index), label=model)
    for point in mine:
      axes.annotate(point.stage, (point.bytes, 100 * point.precision), fontsize=7,
                    xytext=(4, 3), textcoords='offset points')
  axes.set_xscale('log')
  axes.set_xlabel('bytes (float32 weights, or the int8 file on disk)')
  axes.set_ylabel('precision @ 1 on the 10,000 test images (%)')
  axes.set_title('Accuracy against size')
  axes.grid(True, which='both', alpha=0.3)
  axes.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
