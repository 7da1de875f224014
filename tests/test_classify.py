"""Tests of cifar10_classify: reading image files, the three kinds of source, bad files."""

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image
from PIL import ImageFile

import cifar10_classify
import cifar10_export
import cifar10_model
import cifar10_records
import cifar10_run
import cifar10_scoring
import cifar10_trainer
from compress import calibration as calibration_lib
from compress import int8
from compress import quantize
from fixtures import tiny_config, tiny_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_32x32_png_is_read_exactly_and_a_larger_photo_is_cropped_square(tmp_path):
  image = tiny_split(num=1).images[0]
  Image.fromarray(image).save(tmp_path / 'small.png')
  np.testing.assert_array_equal(cifar10_classify.read_image(tmp_path / 'small.png'), image)
  # 96 x 64, the central 64 x 64 square one colour and the sides another: the sides go.
  wide = np.zeros((64, 96, 3), np.uint8)
  wide[:, 16:80] = (200, 10, 30)
  Image.fromarray(wide).save(tmp_path / 'wide.png')
  read = cifar10_classify.read_image(tmp_path / 'wide.png')
  assert read.shape == (32, 32, 3) and read.dtype == np.uint8
  np.testing.assert_array_equal(read, np.broadcast_to([200, 10, 30], (32, 32, 3)))


def test_16_bit_and_float_images_are_scaled_to_8_bits_not_clipped(tmp_path):
  ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))
  Image.fromarray(ramp).save(tmp_path / 'ramp16.png')  # a 16-bit grayscale PNG
  with Image.open(tmp_path / 'ramp16.png') as image:
    assert image.mode in ('I', 'I;16')  # what convert('RGB') used to clip at 255
  read = cifar10_classify.read_image(str(tmp_path / 'ramp16.png'))
  np.testing.assert_array_equal(read[:, :, 0], np.round(ramp / 257).astype(np.uint8))
  assert read[0, 0].tolist() == [0, 0, 0] and read[0, -1].tolist() == [255, 255, 255]
  unit = np.tile(np.linspace(0.0, 1.0, 32, dtype=np.float32), (32, 1))
  Image.fromarray(unit, mode='F').save(tmp_path / 'unit.tif')  # a float TIFF in 0..1
  read = cifar10_classify.read_image(str(tmp_path / 'unit.tif'))
  np.testing.assert_array_equal(read[:, :, 1], np.round(unit * 255).astype(np.uint8))
  Image.fromarray(unit * 1000 - 5, mode='F').save(tmp_path / 'wild.tif')
  with pytest.raises(ValueError, match='wild.tif: float pixels from -5 to 995'):
    cifar10_classify.read_image(str(tmp_path / 'wild.tif'))


def test_a_fifo_and_a_corrupt_png_are_errors_and_the_rest_is_classified_in_chunks(tmp_path):
  files = []
  for index in range(5):
    path = tmp_path / f'{index}.png'
    Image.fromarray(np.full((32, 32, 3), index * 40, np.uint8)).save(path)
    files.append(str(path))
  os.mkfifo(tmp_path / 'pipe.png')  # opening it for reading would block forever
  good = (tmp_path / '0.png').read_bytes()
  corrupt = bytearray(good)
  corrupt[40:44] = b'\xff\xff\xff\xff'  # IDAT's type broken: Image.open refuses the file
  (tmp_path / 'corrupt.png').write_bytes(bytes(corrupt))
  files[2:2] = [str(tmp_path / 'pipe.png'), str(tmp_path / 'corrupt.png')]
  seen = []

  def probabilities_of(images):
    seen.append(len(images))
    return np.tile(np.eye(10)[images[:, 0, 0, 0] % 10], 1)

  rows = list(cifar10_classify.classify(files, probabilities_of, 1, chunk=3))
  assert [path for path, _, _ in rows] == files
  errors = {path: error for path, _, error in rows if error}
  assert set(errors) == {str(tmp_path / 'pipe.png'), str(tmp_path / 'corrupt.png')}
  assert 'not a regular file' in errors[str(tmp_path / 'pipe.png')]
  assert seen == [2, 2, 1]  # three chunks of 3 files, 5 of them images
  assert [top[0][1] for _, top, error in rows if not error] == [0, 40 % 10, 80 % 10, 120 % 10,
                                                              160 % 10]


def png_chunk(kind, body):
  return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))


def png_with_a_broken_second_idat(image):
  """PNG bytes of `image` whose data is split over two IDAT chunks, the second one's type
  broken (b'I\\xffAT'): Image.open reads the header and the first chunk, load() fails."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, 'PNG')
  data, chunks, position = buffer.getvalue(), [], 8
  while position < len(data):
    (length,) = struct.unpack('>I', data[position:position + 4])
    chunks.append((data[position + 4:position + 8], data[position + 8:position + 8 + length]))
    position += 12 + length
  pixels = b''.join(body for kind, body in chunks if kind == b'IDAT')
  head = b''.join(png_chunk(kind, body) for kind, body in chunks if kind not in (b'IDAT',
                                                                                 b'IEND'))
  half = len(pixels) // 2
  return (data[:8] + head + png_chunk(b'IDAT', pixels[:half])
          + png_chunk(b'I\xffAT', pixels[half:]) + png_chunk(b'IEND', b''))


def five_pngs_and(tmp_path, bad_name, bad_bytes=None):
  """Paths of five 32x32 PNGs of values 0, 41, ... 164 with `bad_name` third (written from
  bad_bytes, else a good PNG too)."""
  files = []
  for index in range(5):
    files.append(str(tmp_path / f'{index}.png'))
    Image.fromarray(np.full((32, 32, 3), index * 41, np.uint8)).save(files[-1])
  files.insert(2, str(tmp_path / bad_name))
  if bad_bytes is None:
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(files[2])
  else:
    (tmp_path / bad_name).write_bytes(bad_bytes)
  return files


def classify_by_first_pixel(files):
  """{path: error}, and the top class of each classified file by a fake model whose class
  is the image's first value modulo 10 (0, 41, ... 164: 0 to 4), in chunks of 2 files."""
  rows = list(cifar10_classify.classify(
      files, lambda images: np.eye(10)[images[:, 0, 0, 0] % 10], 1, chunk=2))
  assert [path for path, _, _ in rows] == files
  return ({path: error for path, _, error in rows if error},
          [top[0][1] for _, top, error in rows if not error])


def run_on_first_pixel(monkeypatch, files, **values):
  """The exit status of run() on `files` with the model of classify_by_first_pixel as its
  source (the lines go to stdout and stderr)."""
  monkeypatch.setattr(cifar10_classify, 'open_source',
                      lambda source, ema: lambda images: np.eye(10)[images[:, 0, 0, 0] % 10])
  defaults = dict(source='fake', ema=True, top_k=1, json=False, verbosity_given=False)
  return cifar10_classify.run(dict(defaults, **values), files)


@pytest.mark.parametrize('as_json', [False, True])
def test_json_lines_hold_every_file_in_order_a_failed_one_as_an_error(tmp_path, monkeypatch,
                                                                       capsys, as_json):
  files = five_pngs_and(tmp_path, 'broken.png', b'not a png')
  assert run_on_first_pixel(monkeypatch, files, json=as_json) == 1
  out, err = capsys.readouterr()
  reason = err.splitlines()[0].split(f'error: {files[2]}: ', 1)[1]
  assert err.splitlines() == [f'error: {files[2]}: {reason}']  # the same line either way
  assert reason.startswith('not an image this script can read (')
  if not as_json:
    assert out.splitlines() == [f'{path}: {name} 1.000' for path, name in
                                zip(files[:2] + files[3:], ('airplane', 'automobile', 'bird',
                                                            'cat', 'deer'))]
    return
  lines = out.splitlines()
  assert [json.loads(line) for line in lines] == [
      {'file': files[0], 'top': [{'class': 'airplane', 'index': 0, 'probability': 1.0}]},
      {'file': files[1], 'top': [{'class': 'automobile', 'index': 1, 'probability': 1.0}]},
      {'file': files[2], 'error': reason},
      {'file': files[3], 'top': [{'class': 'bird', 'index': 2, 'probability': 1.0}]},
      {'file': files[4], 'top': [{'class': 'cat', 'index': 3, 'probability': 1.0}]},
      {'file': files[5], 'top': [{'class': 'deer', 'index': 4, 'probability': 1.0}]}]


def test_a_png_that_pillow_opens_but_cannot_load_is_one_error_and_the_rest_is_classified(
    tmp_path):
  damaged = png_with_a_broken_second_idat(np.full((32, 32, 3), 7, np.uint8))
  with Image.open(io.BytesIO(damaged)) as image:  # open succeeds, the decoder fails
    with pytest.raises(SyntaxError, match='broken PNG file'):
      image.load()
  files = five_pngs_and(tmp_path, 'split.png', damaged)
  errors, classes = classify_by_first_pixel(files)
  assert list(errors) == [files[2]]
  assert errors[files[2]].startswith('not an image this script can read (') and (
      'SyntaxError: broken PNG' in errors[files[2]])
  assert classes == [0, 1, 2, 3, 4]


@pytest.mark.parametrize('error', [struct.error('unpack requires a buffer of 4 bytes'),
                                   EOFError(), IndexError('list index out of range'),
                                   TypeError('bad operand'), ZeroDivisionError('division'),
                                   MemoryError()])
def test_any_exception_of_a_decoder_is_that_files_error_line(tmp_path, monkeypatch, error):
  load = ImageFile.ImageFile.load

  def failing_load(image):
    if str(image.filename).endswith('damaged.png'):
      raise error
    return load(image)
  monkeypatch.setattr(ImageFile.ImageFile, 'load', failing_load)
  files = five_pngs_and(tmp_path, 'damaged.png')
  errors, classes = classify_by_first_pixel(files)
  assert list(errors) == [files[2]] and '\n' not in errors[files[2]]
  assert errors[files[2]].startswith('not an image this script can read (')
  assert type(error).__name__ in errors[files[2]] and str(error) in errors[files[2]]
  assert classes == [0, 1, 2, 3, 4]


def test_a_ctrl_c_while_decoding_ends_the_run(tmp_path, monkeypatch):
  def interrupted(image):
    del image
    raise KeyboardInterrupt
  monkeypatch.setattr(ImageFile.ImageFile, 'load', interrupted)
  with pytest.raises(KeyboardInterrupt):
    list(cifar10_classify.classify(five_pngs_and(tmp_path, 'any.png'), None, 1))


def test_top_classes_are_the_most_probable_first():
  probabilities = np.array([0.05, 0.1, 0.05, 0.5, 0.0, 0.2, 0.0, 0.05, 0.05, 0.0])
  assert cifar10_classify.top_classes(probabilities, 3) == [
      ('cat', 3, 0.5), ('dog', 5, 0.2), ('automobile', 1, 0.1)]


def test_a_folder_that_holds_no_model_is_a_clear_error(tmp_path):
  with pytest.raises(cifar10_classify.SourceError, match='neither a run folder'):
    cifar10_classify.open_source(str(tmp_path))


def test_a_tflite_file_that_is_not_an_export_is_a_clear_error(tmp_path):
  (tmp_path / 'junk.tflite').write_bytes(os.urandom(256))
  with pytest.raises(cifar10_classify.SourceError, match='junk.tflite is not a TFLite file'):
    cifar10_classify.open_source(str(tmp_path / 'junk.tflite'))


@pytest.fixture(scope='module', name='sources')
def fixture_sources(tmp_path_factory, real_batches_dir):
  """Ten PNG files of real test images and a corrupt one; a 20-step budget0 run (BatchNorm),
  its export and its int8 file; the evaluation's and the int8 runner's classes of the ten."""
  root = tmp_path_factory.mktemp('classify')
  test = cifar10_records.read_split(os.path.dirname(real_batches_dir), 'test')
  ten = cifar10_records.Split(images=test.images[:10], labels=test.labels[:10])
  files = []
  for index, image in enumerate(ten.images):
    files.append(str(root / f'test{index}.png'))
    Image.fromarray(image).save(files[-1])
  (root / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + os.urandom(64))
  files.insert(4, str(root / 'corrupt.png'))
  config = tiny_config(root / 'run', model='budget0', image_size=32)  # budget0's own size
  cifar10_trainer.train(config, tiny_split())
  checkpoint = cifar10_run.newest_checkpoint(config.train_dir)
  evaluator = cifar10_scoring.Evaluator(config, ten)
  evaluator.restore(checkpoint)
  evaluator.restore_ema_shadows()
  logits = evaluator.scores(evaluator.images).numpy()
  expected = (np.argmax(logits, axis=1), np.max(cifar10_classify.softmax(logits), axis=1))
  cifar10_export.export_run(config.train_dir, str(root / 'export'), None,
                            cifar10_export.Options(verify_images=0))
  folded = cifar10_model.fold_batchnorm(evaluator.model)
  meta, arrays = quantize.quantize_model(folded, evaluator.images.numpy(),
                                         calibration_lib.Calibration(images=10))
  meta.update(model='budget0', image_size=32, step=20, weights='ema')
  model = int8.Int8Model(meta, arrays)
  model.save(str(root / 'model_int8.npz'))
  int8_expected = (model.predict(int8.eval_preprocess(ten.images, 32)), None)
  return files, {'run': (config.train_dir, expected),
                 'export': (str(root / 'export'), expected),
                 'tflite': (str(root / 'export' / 'model_float.tflite'), expected),
                 'int8': (str(root / 'model_int8.npz'), int8_expected)}


@pytest.mark.subprocess
@pytest.mark.parametrize('kind', ['run', 'export', 'tflite', 'int8'])
def test_each_source_prints_the_evaluations_classes_and_reports_the_corrupt_file(sources,
                                                                                 kind):
  files, by_kind = sources
  source, expected = by_kind[kind]
  # The int8 file in a process where importing TensorFlow fails: it must not need it.
  prefix = 'import sys; sys.modules["tensorflow"] = None; ' if kind == 'int8' else ''
  code = (prefix + 'import runpy; sys.argv = ["cifar10_classify.py"] + sys.argv[1:]; '
          'runpy.run_path("cifar10_classify.py", run_name="__main__")')
  if not prefix:
    code = 'import sys; ' + code
  result = subprocess.run([sys.executable, '-c', code, f'--source={source}', '--json',
                           '--top_k=2', *files], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 1, result.stderr  # the corrupt file
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [line for line in errors if 'corrupt.png' in line] and len(errors) == 1
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [line['file'] for line in lines] == files  # the corrupt one too, in its place
  (corrupt,) = [line for line in lines if 'error' in line]
  assert 'corrupt.png' in corrupt['file'] and corrupt['error'] in errors[0]
  lines = [line for line in lines if 'error' not in line]
  classes, probabilities = expected
  assert [line['top'][0]['index'] for line in lines] == list(classes)
  if probabilities is not None:  # a float source: the evaluation's softmax
    np.testing.assert_allclose([line['top'][0]['probability'] for line in lines],
                               probabilities, atol=1e-4)
  assert all(line['top'][0]['class'] == cifar10_records.CLASS_NAMES[line['top'][0]['index']]
             and line['top'][0]['probability'] >= line['top'][1]['probability']
             for line in lines)


@pytest.mark.parametrize('classes', [3, 20])
def test_a_model_of_other_classes_is_refused_not_mislabelled(tmp_path, classes):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class Other(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8, name='images')])
    def serve(self, images):
      batch = tf.shape(images)[0]
      return {'probabilities': tf.fill([batch, classes], 1.0 / classes)}

  module = Other()
  tf.saved_model.save(module, str(tmp_path / 'other'), signatures={'serving_default':
                                                                  module.serve})
  with pytest.raises(cifar10_classify.SourceError, match=f'shape \\(1, {classes}\\).*not '
                     '\\(1, 10\\)'):
    cifar10_classify.open_source(str(tmp_path / 'other'))
