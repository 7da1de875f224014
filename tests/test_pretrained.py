"""Tests of the int8 models kept in pretrained/: each loads, is listed, and scores its figure."""

import os
import re

import pytest

import cifar10_records
from compress import int8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, 'pretrained')
MAX_TOTAL_BYTES = 3 * 2**20  # what git may hold of them


def listed():
  """{file: (precision as a fraction, bytes)} of the rows of pretrained/README.md."""
  rows = {}
  with open(os.path.join(FOLDER, 'README.md'), encoding='utf-8') as f:
    for line in f:
      match = re.match(r'\| `([^`]+\.npz)` \|.*\| ([\d.]+) % \| ([\d,]+) \|$', line.strip())
      if match:
        rows[match[1]] = (float(match[2]) / 100, int(match[3].replace(',', '')))
  return rows


def test_every_file_is_listed_with_its_size_and_loads():
  files = sorted(name for name in os.listdir(FOLDER) if name.endswith('.npz'))
  assert files and sorted(listed()) == files
  total = 0
  for name in files:
    path = os.path.join(FOLDER, name)
    assert os.path.getsize(path) == listed()[name][1], name
    total += os.path.getsize(path)
    model = int8.Int8Model.load(path)
    assert model.meta['weights'] == 'ema' and model.meta['model'] in name, name
  assert total < MAX_TOTAL_BYTES


@pytest.mark.parametrize('name', sorted(listed()))
def test_each_scores_its_listed_precision_on_the_test_set(name, real_batches_dir):
  test = cifar10_records.read_split(os.path.dirname(real_batches_dir), 'test')
  model = int8.Int8Model.load(os.path.join(FOLDER, name))
  precision, _, _ = int8.evaluate(model, test.images, test.labels, threads=2)
  assert round(100 * precision, 2) == round(100 * listed()[name][0], 2)
