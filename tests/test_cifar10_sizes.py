"""Tests of the accuracy-against-size table and plot (cifar10_sizes.py, cifar10_results.py
--compressed)."""

import json

import pytest

import cifar10_flags
import cifar10_results
import cifar10_sizes
from test_cifar10_results import write_run


def write_report(path, run, model, float_precision, int8_precision, float32, dense, stored,
                 file_bytes, **extra):
  path.parent.mkdir(parents=True, exist_ok=True)
  report = {'checkpoint': f'runs/{run}/ckpt-1000', 'model': model,
            'precision': {'float': float_precision, 'int8': int8_precision},
            'bytes': {'float32_dense': float32, 'int8_dense': dense, 'int8_sparse': stored,
                      'int8_file': file_bytes}, **extra}
  path.write_text(json.dumps(report))
  return str(path)


def test_stages_are_named_from_what_the_report_holds():
  old = {'bytes': {'int8_dense': 400, 'int8_sparse': 390}}
  assert cifar10_sizes.stage(old) == '8-bit PTQ'
  assert cifar10_sizes.stage({'bytes': {'int8_dense': 400, 'int8_sparse': 70}}) == (
      'pruned + 8-bit PTQ')
  qat = {'bytes': {'int8_dense': 400, 'int8_sparse': 200}, 'calibration': 'trained ranges',
         'weight_bits': {'conv1': 8, 'conv2': 4, 'logits': 8}, 'coding': 'none',
         'weight_zeros': 0.3, 'size_breakdown': {'positions': {'stored': 900}}}
  # Not pruned: rounding to 4 bits zeroed 30 % (stored sparse where smaller, all the same).
  assert cifar10_sizes.stage(qat) == '4-bit QAT'
  qat.update(coding='lzma', weight_zeros=0.91)
  assert cifar10_sizes.stage(qat) == 'pruned + 4-bit QAT + lzma'


def test_results_with_compressed_reports_write_the_size_table_and_plot(tmp_path):
  write_run(tmp_path / 'tuto', 'tutorial', [(10000, 0.814, 600.0)])
  ptq = write_report(tmp_path / 'a' / 'quant_report.json', 'budget1_m20k', 'budget1', 0.9025,
                     0.9017, 1_606_440, 405_600, 404_700, 414_611)
  deep = write_report(tmp_path / 'b' / 'quant_report.json', 'budget1_deep', 'budget1', 0.8890,
                      0.8880, 1_606_440, 405_600, 45_000, 40_161, calibration='trained ranges',
                      weight_bits={'c1': 8, 'c2': 4}, coding='lzma', weight_zeros=0.9)
  values, _ = cifar10_flags.parse(cifar10_results.define_flags, [
      f'--runs={tmp_path / "tuto"}', f'--out_dir={tmp_path / "out"}',
      f'--compressed={ptq},{deep},{ptq}'])
  assert cifar10_results.run(values) is None
  assert (tmp_path / 'out' / 'sizes.png').stat().st_size > 10_000
  rows = (tmp_path / 'out' / 'sizes.md').read_text().splitlines()[2:]
  assert rows == [  # Each point once (a QAT run's float weights none); largest file first.
      '| budget1 | `budget1_m20k` | float32 | 90.25% | 1,606,440 | 1.0x |',
      '| budget1 | `budget1_m20k` | 8-bit PTQ | 90.17% | 414,611 | 3.9x |',
      '| budget1 | `budget1_deep` | pruned + 4-bit QAT + lzma | 88.80% | 40,161 | 40.0x |']


@pytest.mark.parametrize('text', ['{', '[]', '{"model": "budget1"}'])
def test_a_file_not_of_quantize_is_named(tmp_path, text):
  (tmp_path / 'r.json').write_text(text)
  with pytest.raises(cifar10_sizes.SizeError, match='r.json is not a compress/quantize.py'):
    cifar10_sizes.read_report(str(tmp_path / 'r.json'))


def test_compressed_alone_writes_the_size_table_and_nothing_else(tmp_path):
  ptq = write_report(tmp_path / 'a' / 'quant_report.json', 'budget1_m20k', 'budget1', 0.9025,
                     0.9017, 1_606_440, 405_600, 404_700, 414_611)
  values, _ = cifar10_flags.parse(cifar10_results.define_flags, [
      f'--out_dir={tmp_path / "out"}', f'--compressed={ptq}'])
  assert cifar10_results.run(values) is None
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['sizes.md', 'sizes.png']


def test_a_previous_table_keeps_the_rows_of_runs_not_given_again(tmp_path):
  """Run folders go (a new machine, a clean-up): their rows stay, read back from sizes.md,
  while a report given again replaces its own row."""
  old = tmp_path / 'old.md'
  old.write_text(
      '| model | run | stage | precision @ 1 | bytes | smaller than float32 |\n'
      '|---|---|---|---|---|---|\n'
      '| budget1 | `budget1_m20k` | float32 | 90.25% | 1,606,440 | 1.0x |\n'
      '| budget1 | `budget1_m20k_qat4` | 4-bit QAT | 89.72% | 223,592 | 7.2x |\n'
      '| budget1 | `budget1_deep` | pruned + 4-bit QAT + lzma | 88.30% | 44,004 | 36.5x |\n')
  points = cifar10_sizes.read_table(str(old))
  assert [(p.run, p.stage, p.precision, p.bytes, p.float32_bytes) for p in points] == [
      ('budget1_m20k', 'float32', 0.9025, 1_606_440, 1_606_440),
      ('budget1_m20k_qat4', '4-bit QAT', 0.8972, 223_592, 1_606_440),  # its model's float32
      ('budget1_deep', 'pruned + 4-bit QAT + lzma', 0.8830, 44_004, 1_606_440)]
  deep = write_report(tmp_path / 'b' / 'quant_report.json', 'budget1_deep', 'budget1', 0.8890,
                      0.8880, 1_606_440, 405_600, 45_000, 40_161, calibration='trained ranges',
                      weight_bits={'c1': 8, 'c2': 4}, coding='lzma', weight_zeros=0.9)
  values, _ = cifar10_flags.parse(cifar10_results.define_flags, [
      f'--out_dir={tmp_path / "out"}', f'--compressed={deep}', f'--previous_sizes={old}'])
  assert cifar10_results.run(values) is None
  assert (tmp_path / 'out' / 'sizes.md').read_text().splitlines()[2:] == [
      '| budget1 | `budget1_m20k` | float32 | 90.25% | 1,606,440 | 1.0x |',
      '| budget1 | `budget1_m20k_qat4` | 4-bit QAT | 89.72% | 223,592 | 7.2x |',
      '| budget1 | `budget1_deep` | pruned + 4-bit QAT + lzma | 88.80% | 40,161 | 40.0x |']
  (tmp_path / 'bad.md').write_text('| a |\n')
  values, _ = cifar10_flags.parse(cifar10_results.define_flags, [
      f'--out_dir={tmp_path / "out"}', f'--compressed={deep}',
      f'--previous_sizes={tmp_path / "bad.md"}'])
  assert cifar10_results.run(values).startswith(f'error: {tmp_path / "bad.md"} is not a sizes.md')
