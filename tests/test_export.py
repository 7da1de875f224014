"""Tests of cifar10_export: the SavedModel and TFLite files, their check, and a whole-or-nothing
export folder."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import cifar10_deploy
import cifar10_export
import cifar10_records
import cifar10_trainer
import cifar10_config
import cifar10_run
from compress import calibration as calibration_lib
from fixtures import tiny_config, tiny_split, write_batches_dir


@pytest.fixture(scope='module', name='runs')
def fixture_runs(tmp_path_factory):
  """20-step runs on tiny data of the tutorial model at 24x24 (the crop inside the exported
  graph; LRN; spectral convolutions in evaluation), of budget0 at 32x32 (BatchNorm) and of
  mobile1 (depthwise convolutions, linear residual adds), and a data folder holding that tiny
  data."""
  root = tmp_path_factory.mktemp('export')
  runs = {}
  for model, size in (('tutorial', 24), ('budget0', 32), ('mobile1', 32)):
    # conv=auto: the tutorial trains with its spectral conv2 on a CPU, as a real run does.
    config = tiny_config(root / model, model=model, image_size=size, conv='auto')
    cifar10_trainer.train(config, tiny_split())
    runs[model] = str(root / model)
  return runs, write_batches_dir(str(root / 'data'), tiny_split())


@pytest.mark.subprocess
@pytest.mark.parametrize('model', ['tutorial', 'budget0', 'mobile1'])
def test_exported_files_give_the_evaluations_classes_and_logits(runs, model, tmp_path):
  runs, batches_dir = runs
  export_dir = tmp_path / 'out'
  more = model != 'tutorial'  # int8 TFLite and ONNX too, in TF Serving's version 3
  report = cifar10_export.export_run(
      runs[model], str(export_dir), batches_dir,
      cifar10_export.Options(tflite_int8=more, onnx=more, serving_version=3 if more else 1,
                             verify_images=32,
                             calibration=calibration_lib.Calibration(images=16)))
  assert report['batchnorm_folded'] is (model != 'tutorial')
  assert report['image_size'] == (24 if model == 'tutorial' else 32)
  checked = ['saved_model', 'tflite_float'] + (['tflite_int8', 'onnx'] if more else [])
  assert sorted(report['check']) == sorted(checked)
  for name in checked:  # the SavedModel in a TensorFlow-only process
    check = report['check'][name]
    assert check['images'] == 32, name
    if name != 'tflite_int8':
      assert check['same_class'] == 32 and check['max_logit_difference'] < 1e-4, name
  assert sorted(os.listdir(export_dir)) == sorted(
      ['export.json', 'labels.txt', 'model_float.tflite', 'saved_model']
      + (['model.onnx', 'model_int8.tflite'] if more else []))
  assert json.loads((export_dir / 'export.json').read_text())['step'] == 20
  assert os.listdir(tmp_path) == ['out']  # no temporary folder beside it
  version = export_dir / 'saved_model' / ('3' if more else '1')  # TF Serving's layout
  assert cifar10_deploy.saved_model_dir(str(export_dir)) == str(version)
  names = (export_dir / 'labels.txt').read_text().splitlines()
  assert names == list(cifar10_records.CLASS_NAMES)
  assert (version / 'assets' / 'labels.txt').read_text().splitlines() == names
  # The signature's other outputs, on a batch size the check did not use.
  images = tiny_split(num=3, seed=5).images
  serve = tf.saved_model.load(str(version)).signatures['serving_default']
  outputs = {key: value.numpy() for key, value in serve(images=tf.constant(images)).items()}
  np.testing.assert_allclose(outputs['probabilities'], tf.nn.softmax(outputs['logits']),
                             rtol=1e-6)
  np.testing.assert_array_equal(outputs['classes'], np.argmax(outputs['logits'], axis=1))
  assert [name.decode() for name in outputs['labels']] == [names[i] for i in outputs['classes']]
  files = ['model_float.tflite'] + (['model_int8.tflite'] if more else [])
  for name in files:  # Each TFLite file takes uint8 images and names its outputs alike.
    content = (export_dir / name).read_bytes()
    lite = cifar10_deploy.interpreter(content)
    (signature,) = lite.get_signature_list().values()
    assert signature['inputs'] == ['images'] and sorted(signature['outputs']) == sorted(outputs)
    assert lite.get_input_details()[0]['dtype'] == np.uint8
    got = cifar10_deploy.tflite_function(content)(images)
    assert list(got['labels']) == [names[i] for i in got['classes']]
    tolerance = 0.1 * np.max(np.abs(outputs['logits'])) if 'int8' in name else 1e-4
    assert np.max(np.abs(got['logits'] - outputs['logits'])) < tolerance, name
  if more:  # TFLite's int8: integer weights and activations inside; ONNX: the same outputs
    details = cifar10_deploy.interpreter((export_dir / 'model_int8.tflite').read_bytes())
    assert {np.int8, np.int32} <= {d['dtype'] for d in details.get_tensor_details()}
    kinds = {op['op_name'] for op in details._get_ops_details()}  # pylint: disable=protected-access
    assert ('DEPTHWISE_CONV_2D' in kinds) is (model == 'mobile1')
    got = cifar10_deploy.onnx_function(str(export_dir / 'model.onnx'))(images)
    np.testing.assert_array_equal(got['classes'], outputs['classes'])
    assert list(got['labels']) == [names[i] for i in outputs['classes']]
    np.testing.assert_allclose(got['logits'], outputs['logits'], atol=1e-4)


def test_an_existing_export_dir_is_refused_unless_overwrite(runs, tmp_path):
  runs, batches_dir = runs
  export_dir = tmp_path / 'out'
  export_dir.mkdir()
  (export_dir / 'keep').write_text('x')
  options = cifar10_export.Options(verify_images=0)
  with pytest.raises(cifar10_config.ConfigError, match='exists: pass --overwrite'):
    cifar10_export.export_run(runs['tutorial'], str(export_dir), batches_dir, options)
  assert os.listdir(export_dir) == ['keep']
  overwrite = cifar10_export.Options(verify_images=0, overwrite=True)
  # --overwrite replaces an earlier export or an empty folder, and nothing else.
  with pytest.raises(cifar10_config.ConfigError, match='is not an earlier export'):
    cifar10_export.export_run(runs['tutorial'], str(export_dir), batches_dir, overwrite)
  assert os.listdir(export_dir) == ['keep']
  (export_dir / 'keep').unlink()
  for _ in range(2):  # an empty folder, then the export it now holds
    cifar10_export.export_run(runs['tutorial'], str(export_dir), batches_dir, overwrite)
    assert sorted(os.listdir(export_dir)) == ['export.json', 'labels.txt',
                                              'model_float.tflite', 'saved_model']
  assert os.listdir(tmp_path) == ['out']  # no temporary folder left


@pytest.mark.parametrize('where', ['the run itself', 'the folder of the runs'])
def test_overwrite_never_deletes_a_run(runs, where):
  runs, batches_dir = runs
  run_dir = runs['tutorial']
  target = run_dir if where == 'the run itself' else os.path.dirname(run_dir)
  before = sorted(os.listdir(target))
  with pytest.raises(cifar10_config.ConfigError, match='is not an earlier export'):
    cifar10_export.export_run(run_dir, target, batches_dir,
                              cifar10_export.Options(verify_images=0, overwrite=True))
  assert sorted(os.listdir(target)) == before
  assert cifar10_run.newest_checkpoint(run_dir)


def test_a_folder_that_appears_during_the_export_is_not_replaced(runs, tmp_path, monkeypatch):
  runs, batches_dir = runs
  export_dir = tmp_path / 'out'
  real = cifar10_export._export  # pylint: disable=protected-access

  def another_export_finishes_first(*args):
    report = real(*args)
    export_dir.mkdir()
    (export_dir / 'export.json').write_text('{"theirs": 1}')
    return report

  monkeypatch.setattr(cifar10_export, '_export', another_export_finishes_first)
  with pytest.raises(cifar10_export.ExportError, match='appeared while this export ran'):
    cifar10_export.export_run(runs['tutorial'], str(export_dir), batches_dir,
                              cifar10_export.Options(verify_images=0))
  assert os.listdir(export_dir) == ['export.json']
  assert json.loads((export_dir / 'export.json').read_text()) == {'theirs': 1}
  assert os.listdir(tmp_path) == ['out']


def test_a_failed_export_leaves_nothing(runs, tmp_path, monkeypatch):
  runs, batches_dir = runs
  def fail(saved_model_dir):
    raise RuntimeError(f'converter broke on {saved_model_dir}')
  monkeypatch.setattr(cifar10_export, 'convert_float', fail)
  with pytest.raises(cifar10_export.ExportError, match='conversion failed: converter broke'):
    cifar10_export.export_run(runs['tutorial'], str(tmp_path / 'out'), batches_dir,
                              cifar10_export.Options(verify_images=0))
  assert not os.listdir(tmp_path)


@pytest.mark.subprocess
def test_a_check_that_differs_writes_nothing(runs, tmp_path, monkeypatch):
  runs, batches_dir = runs
  real = cifar10_export.reference_logits
  monkeypatch.setattr(cifar10_export, 'reference_logits',  # as if the export computed otherwise
                      lambda *args, **kwargs: real(*args, **kwargs) + 0.01)
  with pytest.raises(cifar10_export.ExportError, match='differs from the evaluation by 1.00e-02'):
    cifar10_export.export_run(runs['tutorial'], str(tmp_path / 'out'), batches_dir,
                              cifar10_export.Options(verify_images=8))
  assert not os.listdir(tmp_path)


def test_a_folder_without_a_run_is_a_clear_error(tmp_path):
  with pytest.raises(cifar10_config.ConfigError, match='--checkpoint_dir=.*holds no trained run'):
    cifar10_export.export_run(str(tmp_path), str(tmp_path / 'out'), str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_an_export_cleans_a_killed_ones_leftovers_holds_its_destination_and_is_readable(
    runs, tmp_path):
  runs, batches_dir = runs
  export_dir = tmp_path / 'out'
  leftover = tmp_path / 'out.partial-abc123'  # what a killed export into out leaves
  leftover.mkdir()
  (leftover / 'saved_model.pb').write_bytes(b'x' * 100)
  other = tmp_path / 'other.partial-xyz'  # another destination's: not ours to remove
  other.mkdir()
  with cifar10_run.locked_path(str(tmp_path / '.out.lock'), '--export_dir=out',
                               'exporting there', '--export_dir'):
    pass  # A lock no process holds any more is simply taken.
  cifar10_export.export_run(runs['tutorial'], str(export_dir), batches_dir,
                            cifar10_export.Options(verify_images=0))
  assert not leftover.exists() and other.exists()
  assert (export_dir.stat().st_mode & 0o777) == 0o777 & ~_umask()  # not mkdtemp's 0700


def test_a_second_export_into_the_same_destination_is_refused_while_one_runs(runs, tmp_path):
  runs, batches_dir = runs
  with cifar10_run.locked_path(str(tmp_path / '.out.lock'), f'--export_dir={tmp_path / "out"}',
                               'exporting there', '--export_dir'):
    with pytest.raises(cifar10_run.RunFolderBusy, match='out is in use by another process'):
      cifar10_export.export_run(runs['tutorial'], str(tmp_path / 'out'), batches_dir,
                                cifar10_export.Options(verify_images=0))
  assert not (tmp_path / 'out').exists()


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask
