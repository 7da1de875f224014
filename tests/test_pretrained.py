"""Tests of the models kept in pretrained/: each is listed with its size, has a model card that
states its precision and size, loads, and scores that precision on the test set."""

import os
import re

import numpy as np
import pytest

import cifar10_deploy
import cifar10_records
from compress import int8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, 'pretrained')
MAX_TOTAL_BYTES = 3 * 2**20  # what git may hold of them
# TFLite's int8 kernels (XNNPACK) requantize in float32, so another CPU may move a rare
# image across a class boundary; our runner is exact integers, so its files get no slack.
TFLITE_TOLERANCE = 0.0005


def model_files():
  return sorted(name for name in os.listdir(FOLDER) if name.endswith(('.npz', '.tflite')))


def listed():
  """{file: (precision as a fraction, bytes)} of the rows of pretrained/README.md."""
  rows = {}
  with open(os.path.join(FOLDER, 'README.md'), encoding='utf-8') as f:
    for line in f:
      match = re.match(r'\| `([^`]+\.(?:npz|tflite))` \|.*\| ([\d.]+) % \| ([\d,]+) \|$',
                       line.strip())
      if match:
        rows[match[1]] = (float(match[2]) / 100, int(match[3].replace(',', '')))
  return rows


def card(name):
  """(precision as a fraction, bytes) that the model card <file>.md states, and its text."""
  with open(os.path.join(FOLDER, f'{name}.md'), encoding='utf-8') as f:
    text = f.read()
  precision = re.search(r'^- \*\*Precision @ 1\*\*: ([\d.]+) %', text, re.MULTILINE)
  size = re.search(r'^- \*\*Size\*\*: ([\d,]+) bytes', text, re.MULTILINE)
  assert precision and size, f'{name}.md must state the precision and the size'
  return (float(precision[1]) / 100, int(size[1].replace(',', ''))), text


def test_every_file_is_listed_with_its_size_has_its_card_and_loads():
  files = model_files()
  assert files and sorted(listed()) == files
  total = 0
  for name in files:
    path = os.path.join(FOLDER, name)
    size = os.path.getsize(path)
    assert size == listed()[name][1], name
    total += size
    stated, text = card(name)
    assert stated == listed()[name], name  # the card and the README agree
    for needed in ('Krizhevsky', '2009', 'confident', 'cifar10_train.py', 'ms per image'):
      assert needed in text, (name, needed)
    if name.endswith('.npz'):
      model = int8.Int8Model.load(path)
      assert model.meta['weights'] == 'ema' and model.meta['model'] in name, name
    else:
      with open(path, 'rb') as f:
        lite = cifar10_deploy.interpreter(f.read())
      (signature,) = lite.get_signature_list().values()
      assert signature['inputs'] == ['images'], name
      assert lite.get_input_details()[0]['dtype'] == np.uint8, name
  assert total < MAX_TOTAL_BYTES


@pytest.mark.parametrize('name', sorted(listed()))
def test_each_scores_its_stated_precision_on_the_test_set(name, real_batches_dir):
  test = cifar10_records.read_split(os.path.dirname(real_batches_dir), 'test')
  path = os.path.join(FOLDER, name)
  if name.endswith('.npz'):
    precision, _, _ = int8.evaluate(int8.Int8Model.load(path), test.images, test.labels,
                                    threads=2)
    assert round(100 * precision, 2) == round(100 * card(name)[0][0], 2)
  else:
    outputs = cifar10_deploy.outputs_in_batches(cifar10_deploy.file_function(path),
                                                test.images, 500)
    precision = np.mean(outputs['classes'] == test.labels)
    assert abs(precision - card(name)[0][0]) <= TFLITE_TOLERANCE
    names = np.asarray(cifar10_records.CLASS_NAMES)[outputs['classes']]
    np.testing.assert_array_equal(outputs['labels'], names)
