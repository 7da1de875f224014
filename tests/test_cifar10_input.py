"""Tests for cifar10_input: record decoding, locating/extracting/downloading the data,
bad-input errors, the batched distortions and the tf.data pipelines.

Unit tests build tiny CIFAR-format files (RECORDS_PER_FILE records per .bin) in temp folders;
test_real_data_facts reads the real archive named by CIFAR10_DATA (see conftest.py).
"""

import hashlib
import io
import os
import stat
import tarfile

import numpy as np
import pytest
import tensorflow as tf

import cifar10_input
from cifar10_input import DataError
from fixtures import add_member, tiny_split

RECORDS_PER_FILE = 4
PLANE = 32 * 32
RECORD_BYTES = 1 + 3 * PLANE
BIN_FILES = cifar10_input.TRAIN_FILES + cifar10_input.TEST_FILES
META_TEXT = b'\n'.join(name.encode() for name in cifar10_input.CLASS_NAMES) + b'\n'
OFFLINE_URL = 'http://127.0.0.1:9/cifar-10-binary.tar.gz'


# --------------------------------------------------------------------------- tiny data


def record_bytes(labels, pixels):
  """CIFAR records: labels [N] and pixels uint8 [N, 3072] (R, G, B planes) -> bytes."""
  labels = np.asarray(labels, dtype=np.uint8)[:, None]
  return np.concatenate([labels, np.asarray(pixels, dtype=np.uint8)], axis=1).tobytes()


def cifar_files(records_per_file=RECORDS_PER_FILE):
  """Deterministic contents of every member: {file name: bytes}, random pixels throughout."""
  rng = np.random.default_rng(1234)
  files = {}
  for index, name in enumerate(BIN_FILES):
    labels = (np.arange(records_per_file) + index) % 10
    pixels = rng.integers(0, 256, size=(records_per_file, 3 * PLANE), dtype=np.uint8)
    files[name] = record_bytes(labels, pixels)
  files[cifar10_input.META_FILE] = META_TEXT
  return files


def expected_images(data):
  """Decodes records by the format's definition: pixel [r, c, ch] is byte 1+ch*1024+r*32+c."""
  raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
  r = np.arange(32)[:, None, None]
  c = np.arange(32)[None, :, None]
  ch = np.arange(3)[None, None, :]
  return raw[:, 1 + ch * PLANE + r * 32 + c]


def expected_labels(data):
  return np.frombuffer(data, dtype=np.uint8)[::RECORD_BYTES].astype(np.int32)


def make_batches_dir(root, files=None):
  """Writes root/cifar-10-batches-bin/<members>; returns its path."""
  batches_dir = root / cifar10_input.BATCHES_DIR
  batches_dir.mkdir(parents=True)
  for name, data in (files or cifar_files()).items():
    (batches_dir / name).write_bytes(data)
  return batches_dir


def make_archive(path, files=None, extra=()):
  """Writes a .tar.gz with cifar-10-batches-bin/<name> members, after `extra` hostile ones.

  Args:
    path: the archive to write.
    files: {file name: bytes}; default cifar_files().
    extra: (name, data, fields) members added first, e.g. traversal names or symlinks.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, 'w:gz') as tar:
    for name, data, fields in extra:
      add_member(tar, name, data, **fields)
    for name, data in (files or cifar_files()).items():
      add_member(tar, f'{cifar10_input.BATCHES_DIR}/{name}', data)
  return path


def assert_extracted(batches_dir, files=None):
  """batches_dir holds exactly the regular members, byte for byte."""
  files = files or cifar_files()
  assert sorted(os.listdir(batches_dir)) == sorted(files)
  for name, data in files.items():
    path = os.path.join(batches_dir, name)
    assert not os.path.islink(path) and open(path, 'rb').read() == data, name


def mentions_size(message, size):
  return f'{size:,}' in message or str(size) in message


def md5_of(path):
  return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- read_records


def test_read_records_pixel_layout(tmp_path):
  data = cifar_files()['data_batch_1.bin']
  (tmp_path / 'x.bin').write_bytes(data)
  images, _ = cifar10_input.read_records(str(tmp_path / 'x.bin'))
  np.testing.assert_array_equal(images, expected_images(data))


def test_read_records_labels(tmp_path):
  data = record_bytes([7, 0, 9, 3], np.zeros((4, 3 * PLANE)))
  (tmp_path / 'x.bin').write_bytes(data)
  _, labels = cifar10_input.read_records(str(tmp_path / 'x.bin'))
  np.testing.assert_array_equal(labels, [7, 0, 9, 3])


def test_read_records_shapes_and_dtypes(tmp_path):
  (tmp_path / 'x.bin').write_bytes(cifar_files()['test_batch.bin'])
  images, labels = cifar10_input.read_records(str(tmp_path / 'x.bin'))
  assert (images.shape, images.dtype) == ((RECORDS_PER_FILE, 32, 32, 3), np.uint8)
  assert (labels.shape, labels.dtype) == ((RECORDS_PER_FILE,), np.int32)


# --------------------------------------------------------------------------- locating and loading


def test_find_batches_dir_returns_extracted_folder(tmp_path):
  batches_dir = make_batches_dir(tmp_path)
  found = cifar10_input.find_batches_dir(str(tmp_path), records_per_file=RECORDS_PER_FILE)
  assert os.path.samefile(found, batches_dir)


def test_load_split_train_in_file_order(tmp_path):
  files = cifar_files()
  split = cifar10_input.load_split(str(make_batches_dir(tmp_path, files)), 'train')
  train = b''.join(files[name] for name in cifar10_input.TRAIN_FILES)
  assert len(split) == 5 * RECORDS_PER_FILE
  np.testing.assert_array_equal(split.images, expected_images(train))
  np.testing.assert_array_equal(split.labels, expected_labels(train))


def test_load_split_test(tmp_path):
  files = cifar_files()
  split = cifar10_input.load_split(str(make_batches_dir(tmp_path, files)), 'test')
  assert len(split) == RECORDS_PER_FILE
  np.testing.assert_array_equal(split.images, expected_images(files['test_batch.bin']))
  np.testing.assert_array_equal(split.labels, expected_labels(files['test_batch.bin']))


def test_load_split_train_eval_equals_train(tmp_path):
  batches_dir = str(make_batches_dir(tmp_path))
  train = cifar10_input.load_split(batches_dir, 'train')
  train_eval = cifar10_input.load_split(batches_dir, 'train_eval')
  np.testing.assert_array_equal(train_eval.images, train.images)
  np.testing.assert_array_equal(train_eval.labels, train.labels)


# --------------------------------------------------------------------------- bad input


def test_truncated_bin_error_names_path_and_sizes(tmp_path):
  files = cifar_files()
  files['data_batch_3.bin'] = files['data_batch_3.bin'][:-100]
  path = str(make_batches_dir(tmp_path, files) / 'data_batch_3.bin')
  expected, actual = RECORDS_PER_FILE * RECORD_BYTES, RECORDS_PER_FILE * RECORD_BYTES - 100
  with pytest.raises(DataError) as error:
    cifar10_input.find_batches_dir(str(tmp_path), records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert path in message and 'truncated' in message
  assert mentions_size(message, expected) and mentions_size(message, actual)


def test_oversized_bin_error_names_path_and_sizes(tmp_path):
  files = cifar_files()
  files['test_batch.bin'] += files['test_batch.bin'][:RECORD_BYTES]
  path = str(make_batches_dir(tmp_path, files) / 'test_batch.bin')
  with pytest.raises(DataError) as error:
    cifar10_input.find_batches_dir(str(tmp_path), records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert path in message and 'oversized' in message
  assert mentions_size(message, RECORDS_PER_FILE * RECORD_BYTES)
  assert mentions_size(message, (RECORDS_PER_FILE + 1) * RECORD_BYTES)


def test_missing_bin_error_names_path(tmp_path):
  files = cifar_files()
  del files['data_batch_5.bin']
  batches_dir = make_batches_dir(tmp_path, files)
  with pytest.raises(DataError) as error:
    cifar10_input.find_batches_dir(str(tmp_path), records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert str(batches_dir / 'data_batch_5.bin') in message and 'missing' in message


def test_bad_label_error_names_file_and_record(tmp_path):
  data = record_bytes([1, 2, 10, 255], np.zeros((4, 3 * PLANE)))
  path = tmp_path / 'bad.bin'
  path.write_bytes(data)
  with pytest.raises(DataError) as error:
    cifar10_input.read_records(str(path))
  message = str(error.value)
  assert str(path) in message and 'record 2' in message and '0-9' in message


def test_partial_record_error_names_file(tmp_path):
  path = tmp_path / 'odd.bin'
  path.write_bytes(cifar_files()['data_batch_1.bin'][:-1])
  with pytest.raises(DataError, match='not a whole number') as error:
    cifar10_input.read_records(str(path))
  assert str(path) in str(error.value)


def test_random_bytes_archive_is_corrupt(tmp_path):
  archive = tmp_path / 'data' / cifar10_input.ARCHIVE_NAME
  archive.parent.mkdir()
  archive.write_bytes(np.random.default_rng(0).bytes(50_000))
  extract_dir = tmp_path / 'extract'
  with pytest.raises(DataError) as error:
    cifar10_input.find_batches_dir(str(archive.parent), extract_dir=str(extract_dir),
                                   records_per_file=RECORDS_PER_FILE)
  assert str(archive) in str(error.value) and 'corrupt' in str(error.value)
  assert not [n for n in os.listdir(extract_dir) if n.startswith('.extract')]


def test_archive_cut_in_half_is_corrupt(tmp_path):
  archive = make_archive(tmp_path / 'data' / cifar10_input.ARCHIVE_NAME)
  archive.write_bytes(archive.read_bytes()[:archive.stat().st_size // 2])
  extract_dir = tmp_path / 'extract'
  with pytest.raises(DataError) as error:
    cifar10_input.find_batches_dir(str(archive.parent), extract_dir=str(extract_dir),
                                   records_per_file=RECORDS_PER_FILE)
  assert str(archive) in str(error.value)
  assert os.listdir(extract_dir) == []  # no staging folder, no half-made batches folder


def test_archive_lacking_members(tmp_path):
  files = cifar_files()
  del files['test_batch.bin']
  archive = make_archive(tmp_path / 'data' / cifar10_input.ARCHIVE_NAME, files)
  extract_dir = tmp_path / 'extract'
  with pytest.raises(DataError) as error:
    cifar10_input.find_batches_dir(str(archive.parent), extract_dir=str(extract_dir),
                                   records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert str(archive) in message and 'cifar-10-batches-bin/test_batch.bin' in message
  assert os.listdir(extract_dir) == []


def test_no_data_no_network_names_folder_and_archive(tmp_path):
  data_dir = tmp_path / 'empty'
  data_dir.mkdir()
  with pytest.raises(DataError) as error:
    cifar10_input.find_batches_dir(str(data_dir), url=OFFLINE_URL,
                                   records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert str(data_dir) in message and cifar10_input.ARCHIVE_NAME in message
  assert os.listdir(data_dir) == []  # no .part file left behind


def test_no_data_no_network_names_data_dir_not_extract_dir(tmp_path):
  # The archive is only looked for in data_dir, so that is the folder the advice must name
  # even when extraction goes elsewhere (the CI case: read-only data_dir, a cache).
  data_dir, extract_dir = tmp_path / 'empty', tmp_path / 'cache'
  data_dir.mkdir()
  with pytest.raises(DataError) as error:
    cifar10_input.find_batches_dir(str(data_dir), extract_dir=str(extract_dir), url=OFFLINE_URL,
                                   records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert str(data_dir) in message and cifar10_input.ARCHIVE_NAME in message


def test_download_with_wrong_md5_fails(tmp_path):
  source = make_archive(tmp_path / 'server' / 'archive.tar.gz')
  extract_dir = tmp_path / 'cache'
  url = 'file://' + str(source)
  with pytest.raises(DataError) as error:
    cifar10_input.download_archive(url, str(extract_dir), md5='0' * 32, out=io.StringIO())
  message = str(error.value)
  assert url in message and md5_of(source) in message and '0' * 32 in message
  assert os.listdir(extract_dir) == []  # neither the archive nor the .part file is kept


# --------------------------------------------------------------------------- archives


def test_find_batches_dir_extracts_archive_into_extract_dir(tmp_path):
  archive = make_archive(tmp_path / 'data' / cifar10_input.ARCHIVE_NAME)
  extract_dir = tmp_path / 'extract'
  found = cifar10_input.find_batches_dir(str(archive.parent), extract_dir=str(extract_dir),
                                         records_per_file=RECORDS_PER_FILE)
  assert found == str(extract_dir / cifar10_input.BATCHES_DIR)
  assert_extracted(found)
  assert os.listdir(archive.parent) == [cifar10_input.ARCHIVE_NAME]  # nothing beside it


def test_find_batches_dir_accepts_archive_path(tmp_path):
  archive = make_archive(tmp_path / 'data' / 'renamed.tar.gz')
  extract_dir = tmp_path / 'extract'
  found = cifar10_input.find_batches_dir(str(archive), extract_dir=str(extract_dir),
                                         records_per_file=RECORDS_PER_FILE)
  assert found == str(extract_dir / cifar10_input.BATCHES_DIR)
  assert_extracted(found)


def test_extraction_leaves_no_staging_folder(tmp_path):
  archive = make_archive(tmp_path / 'data' / cifar10_input.ARCHIVE_NAME)
  extract_dir = tmp_path / 'extract'
  cifar10_input.find_batches_dir(str(archive), extract_dir=str(extract_dir),
                                 records_per_file=RECORDS_PER_FILE)
  assert os.listdir(extract_dir) == [cifar10_input.BATCHES_DIR]


def test_hostile_archive_writes_nothing_outside(tmp_path):
  outside = tmp_path / 'outside'  # an absolute folder no member may reach
  extract_dir = tmp_path / 'a' / 'b' / 'extract'
  batches = cifar10_input.BATCHES_DIR
  regular = {'type': tarfile.REGTYPE}
  extra = [
      (f'{batches}/../../evil.bin', b'evil', regular),
      ('../evil.bin', b'evil', regular),
      ('../../evil.bin', b'evil', regular),
      (str(outside / 'evil.bin'), b'evil', regular),
      # A symlink out of the folder, then files written "through" it; and a symlink under a
      # wanted name, which a naive extractor would follow when writing the real member.
      (f'{batches}/escape', b'', {'type': tarfile.SYMTYPE, 'linkname': str(outside)}),
      (f'{batches}/escape/evil.bin', b'evil', regular),
      (f'{batches}/{cifar10_input.META_FILE}', b'',
       {'type': tarfile.SYMTYPE, 'linkname': str(outside / 'evil_meta.txt')}),
      (f'{batches}/data_batch_1.bin', b'',
       {'type': tarfile.LNKTYPE, 'linkname': str(outside / 'evil_hard.bin')}),
  ]
  archive = make_archive(tmp_path / 'data' / cifar10_input.ARCHIVE_NAME, extra=extra)
  found = cifar10_input.find_batches_dir(str(archive), extract_dir=str(extract_dir),
                                         records_per_file=RECORDS_PER_FILE)
  for path in (outside / 'evil.bin', outside / 'evil_meta.txt', outside / 'evil_hard.bin',
               tmp_path / 'a' / 'evil.bin', tmp_path / 'a' / 'b' / 'evil.bin',
               extract_dir / 'evil.bin'):
    assert not os.path.lexists(path), path
  assert not outside.exists()
  assert [str(p) for p in tmp_path.rglob('evil*')] == []
  assert_extracted(found)
  assert os.listdir(extract_dir) == [batches]


# --------------------------------------------------------------------------- download


def test_download_archive_reports_progress_to_out(tmp_path):
  source = make_archive(tmp_path / 'server' / 'archive.tar.gz')
  out = io.StringIO()
  path = cifar10_input.download_archive('file://' + str(source), str(tmp_path / 'cache'),
                                        md5=md5_of(source), out=out)
  assert path == str(tmp_path / 'cache' / cifar10_input.ARCHIVE_NAME)
  assert open(path, 'rb').read() == source.read_bytes()
  assert 'downloading' in out.getvalue()


def test_find_batches_dir_downloads_and_extracts(tmp_path):
  source = make_archive(tmp_path / 'server' / 'archive.tar.gz')
  data_dir, extract_dir = tmp_path / 'empty', tmp_path / 'cache'
  data_dir.mkdir()
  found = cifar10_input.find_batches_dir(str(data_dir), extract_dir=str(extract_dir),
                                         url='file://' + str(source), md5=md5_of(source),
                                         records_per_file=RECORDS_PER_FILE)
  assert found == str(extract_dir / cifar10_input.BATCHES_DIR)
  assert_extracted(found)
  assert sorted(os.listdir(extract_dir)) == sorted([cifar10_input.ARCHIVE_NAME,
                                                    cifar10_input.BATCHES_DIR])


# --------------------------------------------------------------------------- default_extract_dir


def test_default_extract_dir_keeps_writable_folder(tmp_path):
  assert cifar10_input.default_extract_dir(str(tmp_path)) == str(tmp_path)


@pytest.fixture
def read_only_dir(tmp_path):
  folder = tmp_path / 'read_only'
  folder.mkdir()
  yield folder
  folder.chmod(0o755)


def test_default_extract_dir_uses_cache_for_read_only_folder(read_only_dir, tmp_path,
                                                             monkeypatch):
  cache = tmp_path / 'xdg_cache'
  monkeypatch.setenv('XDG_CACHE_HOME', str(cache))
  read_only_dir.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP
                      | stat.S_IROTH | stat.S_IXOTH)  # 0o555
  extract_dir = cifar10_input.default_extract_dir(str(read_only_dir))
  assert os.path.commonpath([extract_dir, str(cache)]) == str(cache)


def test_read_only_data_dir_extracts_into_cache(read_only_dir, tmp_path, monkeypatch):
  cache = tmp_path / 'xdg_cache'
  monkeypatch.setenv('XDG_CACHE_HOME', str(cache))
  make_archive(read_only_dir / cifar10_input.ARCHIVE_NAME)
  read_only_dir.chmod(0o555)
  found = cifar10_input.find_batches_dir(str(read_only_dir), records_per_file=RECORDS_PER_FILE)
  assert os.path.commonpath([found, str(cache)]) == str(cache)
  assert os.listdir(read_only_dir) == [cifar10_input.ARCHIVE_NAME]


# --------------------------------------------------------------------------- distortions


def seed(a, b):
  return tf.constant([a, b], dtype=tf.int32)


def position_images(batch):
  """int32 [batch, 32, 32, 2]: channel 0 is row*32+col, channel 1 the image index."""
  rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing='ij')
  position = np.broadcast_to(rows * 32 + cols, (batch, 32, 32))
  index = np.broadcast_to(np.arange(batch)[:, None, None], (batch, 32, 32))
  return tf.constant(np.stack([position, index], axis=-1), dtype=tf.int32)


def window_kind(crop):
  """'plain' or 'mirrored' if crop [24, 24] of positions is a window of the 32x32 image."""
  top, left = crop[0].min() // 32, crop.min() % 32
  rows = (top + np.arange(24))[:, None] * 32
  cols = left + np.arange(24)
  if top + 24 > 32 or left + 24 > 32:
    return None
  if np.array_equal(crop, rows + cols):
    return 'plain'
  if np.array_equal(crop, rows + cols[::-1]):
    return 'mirrored'
  return None


def test_random_crop_and_flip_shape_and_dtype():
  crops = cifar10_input.random_crop_and_flip(position_images(5), seed(1, 2))
  assert crops.shape == (5, 24, 24, 2) and crops.dtype == tf.int32


def test_random_crop_and_flip_takes_windows_plain_or_mirrored():
  crops = cifar10_input.random_crop_and_flip(position_images(64), seed(3, 4)).numpy()
  kinds = [window_kind(crop[:, :, 0]) for crop in crops]
  assert None not in kinds
  assert {'plain', 'mirrored'} == set(kinds)
  # Channels move together and each output comes from its own image.
  np.testing.assert_array_equal(crops[:, :, :, 1], np.broadcast_to(
      np.arange(64)[:, None, None], (64, 24, 24)))


def test_random_crop_and_flip_varies_the_offset():
  crops = cifar10_input.random_crop_and_flip(position_images(64), seed(3, 4)).numpy()
  offsets = {(crop[:, :, 0].min() // 32, crop[:, :, 0].min() % 32) for crop in crops}
  assert len(offsets) > 10 and all(0 <= r <= 8 and 0 <= c <= 8 for r, c in offsets)


def test_random_crop_and_flip_golden_windows():
  # (top, left, kind) of the first 8 crops for seed (3, 4), as the row/column gathers of
  # sessions 1-6 drew them: the flat-index gather must keep every past run's inputs.
  crops = cifar10_input.random_crop_and_flip(position_images(8), seed(3, 4)).numpy()
  found = [(crop[:, :, 0].min() // 32, crop[:, :, 0].min() % 32, window_kind(crop[:, :, 0]))
           for crop in crops]
  assert found == [(7, 5, 'mirrored'), (2, 4, 'plain'), (0, 2, 'mirrored'), (6, 0, 'plain'),
                   (4, 6, 'plain'), (7, 8, 'plain'), (2, 5, 'plain'), (1, 5, 'plain')]
  np.testing.assert_array_equal(crops[:, :, :, 1], np.broadcast_to(np.arange(8)[:, None, None],
                                                                   (8, 24, 24)))


def test_random_crop_and_flip_same_seed_same_output():
  images = position_images(16)
  first = cifar10_input.random_crop_and_flip(images, seed(5, 6))
  again = cifar10_input.random_crop_and_flip(images, seed(5, 6))
  np.testing.assert_array_equal(first.numpy(), again.numpy())


def test_random_crop_and_flip_other_seed_other_output():
  images = position_images(16)
  first = cifar10_input.random_crop_and_flip(images, seed(5, 6))
  other = cifar10_input.random_crop_and_flip(images, seed(7, 8))
  assert not np.array_equal(first.numpy(), other.numpy())


def random_uint8_images(batch, size=32, seed_value=0):
  rng = np.random.default_rng(seed_value)
  return tf.constant(rng.integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8))


def assert_standardized(images):
  moments = images.numpy().reshape(images.shape[0], -1)
  np.testing.assert_allclose(moments.mean(axis=1), 0.0, atol=1e-3)
  np.testing.assert_allclose(moments.std(axis=1), 1.0, atol=1e-3)


def test_distort_batch_shape_and_dtype():
  distorted = cifar10_input.distort_batch(random_uint8_images(6), seed(1, 1))
  assert distorted.shape == (6, 24, 24, 3) and distorted.dtype == tf.float32


def test_distort_batch_standardizes_each_image():
  assert_standardized(cifar10_input.distort_batch(random_uint8_images(6), seed(2, 2)))


def test_brightness_and_contrast_keep_constant_images_constant():
  levels = np.array([0.0, 30.0, 128.0, 200.0, 255.0, 100.0, 60.0, 10.0], np.float32)
  images = tf.constant(np.broadcast_to(levels[:, None, None, None], (8, 24, 24, 3)))
  out = cifar10_input.random_brightness_and_contrast(images, seed(9, 9)).numpy()
  flat = out.reshape(8, -1)
  np.testing.assert_allclose(flat, flat[:, :1] * np.ones_like(flat), atol=1e-4)
  shift = flat[:, 0] - levels
  assert np.all(np.abs(shift) <= cifar10_input.MAX_BRIGHTNESS_DELTA + 1e-4)
  assert np.any(np.abs(shift) > 1.0)  # brightness does move the images


def test_contrast_scales_deviations_from_the_mean():
  images = tf.cast(random_uint8_images(8, size=24), tf.float32)
  out = cifar10_input.random_brightness_and_contrast(images, seed(4, 2)).numpy()
  centred_in = images.numpy() - images.numpy().mean(axis=(1, 2), keepdims=True)
  centred_out = out - out.mean(axis=(1, 2), keepdims=True)
  factor = (centred_out * centred_in).sum(axis=(1, 2, 3)) / (centred_in ** 2).sum(axis=(1, 2, 3))
  low, high = cifar10_input.CONTRAST_RANGE
  assert np.all((factor >= low - 1e-4) & (factor <= high + 1e-4))
  np.testing.assert_allclose(centred_out, factor[:, None, None, None] * centred_in, atol=1e-3)


def test_central_crop_offset_4_for_24():
  images = position_images(3)
  crop = cifar10_input.central_crop(images, 24).numpy()
  np.testing.assert_array_equal(crop, images.numpy()[:, 4:28, 4:28, :])
  np.testing.assert_array_equal(crop, tf.image.resize_with_crop_or_pad(images, 24, 24).numpy())


def test_central_crop_identity_for_32():
  images = position_images(3)
  np.testing.assert_array_equal(cifar10_input.central_crop(images, 32).numpy(), images.numpy())


def test_eval_batch_is_standardized_central_crop():
  images = random_uint8_images(4)
  out = cifar10_input.eval_batch(images, 24)
  assert out.shape == (4, 24, 24, 3) and out.dtype == tf.float32
  assert_standardized(out)
  expected = tf.image.per_image_standardization(tf.cast(images[:, 4:28, 4:28, :], tf.float32))
  np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)


# --------------------------------------------------------------------------- pipelines


def test_train_inputs_augmented_batches():
  split = tiny_split(20)
  batches = list(cifar10_input.train_inputs(split, batch_size=8, seed=1).take(3))
  for images, labels in batches:
    assert images.shape == (8, 24, 24, 3) and images.dtype == tf.float32
    assert labels.shape == (8,) and labels.dtype == tf.int32
    assert set(labels.numpy()) <= set(split.labels)


def test_train_inputs_without_augmentation_32():
  split = tiny_split(20)
  data = cifar10_input.train_inputs(split, batch_size=8, seed=1, augment=False, image_size=32)
  for images, labels in data.take(3):
    assert images.shape == (8, 32, 32, 3) and images.dtype == tf.float32
    assert labels.shape == (8,) and labels.dtype == tf.int32
    assert set(labels.numpy()) <= set(split.labels)


def test_eval_images_are_every_image_in_order_across_chunks():
  split = tiny_split(10)
  images = cifar10_input.eval_images(split, chunk=3)  # Chunks of 3, 3, 3, 1.
  assert images.shape == (10, 24, 24, 3) and images.dtype == tf.float32
  np.testing.assert_array_equal(images, cifar10_input.eval_batch(split.images, 24))


# --------------------------------------------------------------------------- real data


def test_real_data_location_is_set():
  assert os.environ.get('CIFAR10_DATA'), (
      'CIFAR10_DATA is not set: set it to the folder holding cifar-10-binary.tar.gz or to the '
      'archive itself (`make test` sets it). Real-data tests are never skipped.')


def test_real_data_facts(real_batches_dir):
  train = cifar10_input.load_split(real_batches_dir, 'train')
  test = cifar10_input.load_split(real_batches_dir, 'test')
  assert len(train) == 50_000 and len(test) == 10_000
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [5_000] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), [1_000] * 10)
  np.testing.assert_array_equal(test.labels[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
  mean = train.images.reshape(-1, 3).mean(axis=0, dtype=np.float64) / 255.0
  np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=3e-4)
