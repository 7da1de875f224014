"""Tests for cifar10_records: record decoding, locating/extracting/downloading the data, the
bad-input errors, reading a split straight from the archive, and that no TensorFlow loads.

Unit tests build tiny CIFAR-format files (RECORDS_PER_FILE records per .bin) in temp folders;
test_real_data_facts reads the real archive named by CIFAR10_DATA (see conftest.py).
"""

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import cifar10_records
from cifar10_records import DataError
from fixtures import add_member

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RECORDS_PER_FILE = 4
PLANE = 32 * 32
RECORD_BYTES = 1 + 3 * PLANE
BIN_FILES = cifar10_records.TRAIN_FILES + cifar10_records.TEST_FILES
META_TEXT = b'\n'.join(name.encode() for name in cifar10_records.CLASS_NAMES) + b'\n'
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
  files[cifar10_records.META_FILE] = META_TEXT
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
  batches_dir = root / cifar10_records.BATCHES_DIR
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
      add_member(tar, f'{cifar10_records.BATCHES_DIR}/{name}', data)
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
  images, _ = cifar10_records.read_records(str(tmp_path / 'x.bin'))
  np.testing.assert_array_equal(images, expected_images(data))


def test_read_records_labels(tmp_path):
  data = record_bytes([7, 0, 9, 3], np.zeros((4, 3 * PLANE)))
  (tmp_path / 'x.bin').write_bytes(data)
  _, labels = cifar10_records.read_records(str(tmp_path / 'x.bin'))
  np.testing.assert_array_equal(labels, [7, 0, 9, 3])


def test_read_records_shapes_and_dtypes(tmp_path):
  (tmp_path / 'x.bin').write_bytes(cifar_files()['test_batch.bin'])
  images, labels = cifar10_records.read_records(str(tmp_path / 'x.bin'))
  assert (images.shape, images.dtype) == ((RECORDS_PER_FILE, 32, 32, 3), np.uint8)
  assert (labels.shape, labels.dtype) == ((RECORDS_PER_FILE,), np.int32)


# --------------------------------------------------------------------------- locating and loading


def test_find_batches_dir_returns_extracted_folder(tmp_path):
  batches_dir = make_batches_dir(tmp_path)
  found = cifar10_records.find_batches_dir(str(tmp_path), records_per_file=RECORDS_PER_FILE)
  assert os.path.samefile(found, batches_dir)


def test_load_split_train_in_file_order(tmp_path):
  files = cifar_files()
  split = cifar10_records.load_split(str(make_batches_dir(tmp_path, files)), 'train')
  train = b''.join(files[name] for name in cifar10_records.TRAIN_FILES)
  assert len(split) == 5 * RECORDS_PER_FILE
  np.testing.assert_array_equal(split.images, expected_images(train))
  np.testing.assert_array_equal(split.labels, expected_labels(train))


def test_load_split_test(tmp_path):
  files = cifar_files()
  split = cifar10_records.load_split(str(make_batches_dir(tmp_path, files)), 'test')
  assert len(split) == RECORDS_PER_FILE
  np.testing.assert_array_equal(split.images, expected_images(files['test_batch.bin']))
  np.testing.assert_array_equal(split.labels, expected_labels(files['test_batch.bin']))


def test_load_split_train_eval_equals_train(tmp_path):
  batches_dir = str(make_batches_dir(tmp_path))
  train = cifar10_records.load_split(batches_dir, 'train')
  train_eval = cifar10_records.load_split(batches_dir, 'train_eval')
  np.testing.assert_array_equal(train_eval.images, train.images)
  np.testing.assert_array_equal(train_eval.labels, train.labels)


# --------------------------------------------------------------------------- bad input


def test_truncated_bin_error_names_path_and_sizes(tmp_path):
  files = cifar_files()
  files['data_batch_3.bin'] = files['data_batch_3.bin'][:-100]
  path = str(make_batches_dir(tmp_path, files) / 'data_batch_3.bin')
  expected, actual = RECORDS_PER_FILE * RECORD_BYTES, RECORDS_PER_FILE * RECORD_BYTES - 100
  with pytest.raises(DataError) as error:
    cifar10_records.find_batches_dir(str(tmp_path), records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert path in message and 'truncated' in message
  assert mentions_size(message, expected) and mentions_size(message, actual)


def test_oversized_bin_error_names_path_and_sizes(tmp_path):
  files = cifar_files()
  files['test_batch.bin'] += files['test_batch.bin'][:RECORD_BYTES]
  path = str(make_batches_dir(tmp_path, files) / 'test_batch.bin')
  with pytest.raises(DataError) as error:
    cifar10_records.find_batches_dir(str(tmp_path), records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert path in message and 'oversized' in message
  assert mentions_size(message, RECORDS_PER_FILE * RECORD_BYTES)
  assert mentions_size(message, (RECORDS_PER_FILE + 1) * RECORD_BYTES)


def test_missing_bin_error_names_path(tmp_path):
  files = cifar_files()
  del files['data_batch_5.bin']
  batches_dir = make_batches_dir(tmp_path, files)
  with pytest.raises(DataError) as error:
    cifar10_records.find_batches_dir(str(tmp_path), records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert str(batches_dir / 'data_batch_5.bin') in message and 'missing' in message


def test_bad_label_error_names_file_and_record(tmp_path):
  data = record_bytes([1, 2, 10, 255], np.zeros((4, 3 * PLANE)))
  path = tmp_path / 'bad.bin'
  path.write_bytes(data)
  with pytest.raises(DataError) as error:
    cifar10_records.read_records(str(path))
  message = str(error.value)
  assert str(path) in message and 'record 2' in message and '0-9' in message


def test_a_bin_without_read_permission_is_a_data_error_naming_it(tmp_path, monkeypatch):
  """What a user without the file's read permission gets (root reads it whatever its mode,
  so the kernel's refusal is simulated)."""
  path = tmp_path / 'data_batch_1.bin'
  path.write_bytes(record_bytes([1], np.zeros((1, 3 * PLANE))))

  def refuse(file, *args, **kwargs):
    del args, kwargs
    raise PermissionError(13, 'Permission denied', str(file))
  monkeypatch.setattr(cifar10_records.np, 'fromfile', refuse)
  with pytest.raises(DataError, match=f'cannot read {path} .*Permission denied'):
    cifar10_records.read_records(str(path))


def test_partial_record_error_names_file(tmp_path):
  path = tmp_path / 'odd.bin'
  path.write_bytes(cifar_files()['data_batch_1.bin'][:-1])
  with pytest.raises(DataError, match='not a whole number') as error:
    cifar10_records.read_records(str(path))
  assert str(path) in str(error.value)


def test_random_bytes_archive_is_corrupt(tmp_path):
  archive = tmp_path / 'data' / cifar10_records.ARCHIVE_NAME
  archive.parent.mkdir()
  archive.write_bytes(np.random.default_rng(0).bytes(50_000))
  extract_dir = tmp_path / 'extract'
  with pytest.raises(DataError) as error:
    cifar10_records.find_batches_dir(str(archive.parent), extract_dir=str(extract_dir),
                                     records_per_file=RECORDS_PER_FILE)
  assert str(archive) in str(error.value) and 'corrupt' in str(error.value)
  assert not [n for n in os.listdir(extract_dir) if n.startswith('.extract')]


def test_archive_cut_in_half_is_corrupt(tmp_path):
  archive = make_archive(tmp_path / 'data' / cifar10_records.ARCHIVE_NAME)
  archive.write_bytes(archive.read_bytes()[:archive.stat().st_size // 2])
  extract_dir = tmp_path / 'extract'
  with pytest.raises(DataError) as error:
    cifar10_records.find_batches_dir(str(archive.parent), extract_dir=str(extract_dir),
                                     records_per_file=RECORDS_PER_FILE)
  assert str(archive) in str(error.value)
  assert os.listdir(extract_dir) == []  # no staging folder, no half-made batches folder


def test_archive_lacking_members(tmp_path):
  files = cifar_files()
  del files['test_batch.bin']
  archive = make_archive(tmp_path / 'data' / cifar10_records.ARCHIVE_NAME, files)
  extract_dir = tmp_path / 'extract'
  with pytest.raises(DataError) as error:
    cifar10_records.find_batches_dir(str(archive.parent), extract_dir=str(extract_dir),
                                     records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert str(archive) in message and 'cifar-10-batches-bin/test_batch.bin' in message
  assert os.listdir(extract_dir) == []


def test_no_data_no_network_names_folder_and_archive(tmp_path):
  data_dir = tmp_path / 'empty'
  data_dir.mkdir()
  with pytest.raises(DataError) as error:
    cifar10_records.find_batches_dir(str(data_dir), url=OFFLINE_URL,
                                     records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert str(data_dir) in message and cifar10_records.ARCHIVE_NAME in message
  assert os.listdir(data_dir) == []  # no .part file left behind


def test_no_data_no_network_names_data_dir_not_extract_dir(tmp_path):
  # The archive is only looked for in data_dir, so that is the folder the advice must name
  # even when extraction goes elsewhere (the CI case: read-only data_dir, a cache).
  data_dir, extract_dir = tmp_path / 'empty', tmp_path / 'cache'
  data_dir.mkdir()
  with pytest.raises(DataError) as error:
    cifar10_records.find_batches_dir(str(data_dir), extract_dir=str(extract_dir), url=OFFLINE_URL,
                                     records_per_file=RECORDS_PER_FILE)
  message = str(error.value)
  assert str(data_dir) in message and cifar10_records.ARCHIVE_NAME in message


def test_download_with_wrong_md5_fails(tmp_path):
  source = make_archive(tmp_path / 'server' / 'archive.tar.gz')
  extract_dir = tmp_path / 'cache'
  url = 'file://' + str(source)
  with pytest.raises(DataError) as error:
    cifar10_records.download_archive(url, str(extract_dir), md5='0' * 32, out=io.StringIO())
  message = str(error.value)
  assert url in message and md5_of(source) in message and '0' * 32 in message
  assert os.listdir(extract_dir) == []  # neither the archive nor the .part file is kept


# --------------------------------------------------------------------------- archives


def test_find_batches_dir_extracts_archive_into_extract_dir(tmp_path):
  archive = make_archive(tmp_path / 'data' / cifar10_records.ARCHIVE_NAME)
  extract_dir = tmp_path / 'extract'
  found = cifar10_records.find_batches_dir(str(archive.parent), extract_dir=str(extract_dir),
                                           records_per_file=RECORDS_PER_FILE)
  assert found == str(extract_dir / cifar10_records.BATCHES_DIR)
  assert_extracted(found)
  assert os.listdir(archive.parent) == [cifar10_records.ARCHIVE_NAME]  # nothing beside it


def test_find_batches_dir_accepts_archive_path(tmp_path):
  archive = make_archive(tmp_path / 'data' / 'renamed.tar.gz')
  extract_dir = tmp_path / 'extract'
  found = cifar10_records.find_batches_dir(str(archive), extract_dir=str(extract_dir),
                                           records_per_file=RECORDS_PER_FILE)
  assert found == str(extract_dir / cifar10_records.BATCHES_DIR)
  assert_extracted(found)


def test_extraction_leaves_no_staging_folder(tmp_path):
  archive = make_archive(tmp_path / 'data' / cifar10_records.ARCHIVE_NAME)
  extract_dir = tmp_path / 'extract'
  cifar10_records.find_batches_dir(str(archive), extract_dir=str(extract_dir),
                                   records_per_file=RECORDS_PER_FILE)
  assert os.listdir(extract_dir) == [cifar10_records.BATCHES_DIR]
  mode = stat.S_IMODE(os.stat(extract_dir / cifar10_records.BATCHES_DIR).st_mode)
  assert mode == 0o755  # Readable by every user, as a folder made by hand would be.


def test_hostile_archive_writes_nothing_outside(tmp_path):
  outside = tmp_path / 'outside'  # an absolute folder no member may reach
  extract_dir = tmp_path / 'a' / 'b' / 'extract'
  batches = cifar10_records.BATCHES_DIR
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
      (f'{batches}/{cifar10_records.META_FILE}', b'',
       {'type': tarfile.SYMTYPE, 'linkname': str(outside / 'evil_meta.txt')}),
      (f'{batches}/data_batch_1.bin', b'',
       {'type': tarfile.LNKTYPE, 'linkname': str(outside / 'evil_hard.bin')}),
  ]
  archive = make_archive(tmp_path / 'data' / cifar10_records.ARCHIVE_NAME, extra=extra)
  found = cifar10_records.find_batches_dir(str(archive), extract_dir=str(extract_dir),
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
  path = cifar10_records.download_archive('file://' + str(source), str(tmp_path / 'cache'),
                                          md5=md5_of(source), out=out)
  assert path == str(tmp_path / 'cache' / cifar10_records.ARCHIVE_NAME)
  assert open(path, 'rb').read() == source.read_bytes()
  assert 'downloading' in out.getvalue()


def test_find_batches_dir_downloads_and_extracts(tmp_path):
  source = make_archive(tmp_path / 'server' / 'archive.tar.gz')
  data_dir, extract_dir = tmp_path / 'empty', tmp_path / 'cache'
  data_dir.mkdir()
  found = cifar10_records.find_batches_dir(str(data_dir), extract_dir=str(extract_dir),
                                           url='file://' + str(source), md5=md5_of(source),
                                           records_per_file=RECORDS_PER_FILE)
  assert found == str(extract_dir / cifar10_records.BATCHES_DIR)
  assert_extracted(found)
  assert sorted(os.listdir(extract_dir)) == sorted([cifar10_records.ARCHIVE_NAME,
                                                    cifar10_records.BATCHES_DIR])


# --------------------------------------------------------------------------- default_extract_dir


def test_default_extract_dir_keeps_writable_folder(tmp_path):
  assert cifar10_records.default_extract_dir(str(tmp_path)) == str(tmp_path)


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
  extract_dir = cifar10_records.default_extract_dir(str(read_only_dir))
  assert os.path.commonpath([extract_dir, str(cache)]) == str(cache)


def test_read_only_data_dir_extracts_into_cache(read_only_dir, tmp_path, monkeypatch):
  cache = tmp_path / 'xdg_cache'
  monkeypatch.setenv('XDG_CACHE_HOME', str(cache))
  make_archive(read_only_dir / cifar10_records.ARCHIVE_NAME)
  read_only_dir.chmod(0o555)
  found = cifar10_records.find_batches_dir(str(read_only_dir), records_per_file=RECORDS_PER_FILE)
  assert os.path.commonpath([found, str(cache)]) == str(cache)
  assert os.listdir(read_only_dir) == [cifar10_records.ARCHIVE_NAME]


# --------------------------------------------------------------------------- real data


@pytest.mark.real_data
def test_real_data_location_is_set():
  assert os.environ.get('CIFAR10_DATA'), (
      'CIFAR10_DATA is not set: set it to the folder holding cifar-10-binary.tar.gz or to the '
      'archive itself (`make test` sets it). Real-data tests are never skipped.')


def test_real_data_facts(real_batches_dir):
  train = cifar10_records.load_split(real_batches_dir, 'train')
  test = cifar10_records.load_split(real_batches_dir, 'test')
  assert len(train) == 50_000 and len(test) == 10_000
  np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [5_000] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), [1_000] * 10)
  np.testing.assert_array_equal(test.labels[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
  mean = train.images.reshape(-1, 3).mean(axis=0, dtype=np.float64) / 255.0
  np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=3e-4)


# --------------------------------------------------------------------------- read_split


@pytest.mark.parametrize('split,names', [('test', ['test_batch.bin']),
                                         ('train', list(cifar10_records.TRAIN_FILES))])
def test_read_split_from_the_archive_writes_nothing(tmp_path, split, names):
  files = cifar_files()
  archive = make_archive(tmp_path / 'data' / cifar10_records.ARCHIVE_NAME, files)
  for location in (archive.parent, archive):  # The folder holding it, or the archive itself.
    data = cifar10_records.read_split(str(location), split, records_per_file=RECORDS_PER_FILE)
    raw = b''.join(files[name] for name in names)
    np.testing.assert_array_equal(data.images, expected_images(raw))
    np.testing.assert_array_equal(data.labels, expected_labels(raw))
  assert os.listdir(archive.parent) == [cifar10_records.ARCHIVE_NAME]


def test_read_split_prefers_the_extracted_folder(tmp_path):
  files = cifar_files()
  make_batches_dir(tmp_path, files)
  (tmp_path / cifar10_records.ARCHIVE_NAME).write_bytes(b'not an archive')  # Never opened.
  data = cifar10_records.read_split(str(tmp_path), 'test', records_per_file=RECORDS_PER_FILE)
  np.testing.assert_array_equal(data.labels, expected_labels(files['test_batch.bin']))


def test_read_split_errors_name_the_file(tmp_path):
  with pytest.raises(DataError, match='neither .* nor .* exists'):
    cifar10_records.read_split(str(tmp_path), 'test')
  files = cifar_files()
  files['test_batch.bin'] = files['test_batch.bin'][:-5]
  archive = make_archive(tmp_path / cifar10_records.ARCHIVE_NAME, files)
  with pytest.raises(DataError, match='test_batch.bin holds 12,287 bytes, not a whole number'):
    cifar10_records.read_split(str(archive), 'test', records_per_file=RECORDS_PER_FILE)
  with pytest.raises(DataError, match=r'test_batch.bin is oversized: 12,287 bytes, at most 9,219'):
    cifar10_records.read_split(str(archive), 'test', records_per_file=3)  # Before reading it.
  bad_labels = cifar_files()
  bad_labels['test_batch.bin'] = b'\xc8' + bad_labels['test_batch.bin'][1:]  # Label 200.
  archive = make_archive(tmp_path / 'bad' / cifar10_records.ARCHIVE_NAME, bad_labels)
  with pytest.raises(DataError, match='record 0 has label byte 200'):
    cifar10_records.read_split(str(archive), 'test', records_per_file=RECORDS_PER_FILE)
  archive.write_bytes(archive.read_bytes()[:300])
  with pytest.raises(DataError, match='corrupt or unreadable'):
    cifar10_records.read_split(str(archive), 'test', records_per_file=RECORDS_PER_FILE)


@pytest.mark.subprocess
def test_importing_the_records_module_never_loads_tensorflow():
  code = ('import sys, cifar10_records; '
          'print("tensorflow" in sys.modules, "numpy" in sys.modules)')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
  assert result.stdout.split() == ['False', 'True']


def test_an_oversized_member_is_refused_before_a_byte_is_written(tmp_path):
  files = cifar_files()
  files['data_batch_2.bin'] += bytes(5 * RECORD_BYTES)  # Declares 9 records, not 4.
  archive = make_archive(tmp_path / 'data' / cifar10_records.ARCHIVE_NAME, files)
  extract_dir = tmp_path / 'extract'
  oversized = 'data_batch_2.bin is oversized: expected 12,292 bytes .* found 27,657'
  with pytest.raises(DataError, match=oversized):
    cifar10_records.find_batches_dir(str(archive), extract_dir=str(extract_dir),
                                     records_per_file=RECORDS_PER_FILE)
  assert os.listdir(extract_dir) == []  # Nothing left behind, not even the staging folder.
