"""CIFAR-10's binary records, without TensorFlow: the dataset facts, finding the data, decoding.

Finds the data (an extracted `cifar-10-batches-bin/`, else the `.tar.gz` archive, else the
official download), checks every file's size, and decodes the records into uint8 arrays.
Imports only NumPy and the standard library, so the NumPy int8 runner (compress/int8.py)
reads the test set with it and never loads TensorFlow; cifar10_input.py builds the
TensorFlow pipelines on top of it.

Run alone it checks the data and prints its facts:
    python cifar10_records.py [DATA_DIR]   (default: data)
"""

import dataclasses
import gzip
import hashlib
import http.client
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib

from absl import app
import numpy as np

# Dataset facts (docs/design.md).
DATA_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'
DATA_MD5 = 'c32a1d4ab5d03f1284b67883e8d87530'
ARCHIVE_NAME = 'cifar-10-binary.tar.gz'
BATCHES_DIR = 'cifar-10-batches-bin'
TRAIN_FILES = tuple(f'data_batch_{i}.bin' for i in range(1, 6))
TEST_FILES = ('test_batch.bin',)
META_FILE = 'batches.meta.txt'
IMAGE_SIZE = 32
CHANNELS = 3
NUM_CLASSES = 10
LABEL_BYTES = 1
IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE * CHANNELS
RECORD_BYTES = LABEL_BYTES + IMAGE_BYTES  # 3,073
RECORDS_PER_FILE = 10000
NUM_TRAIN_EXAMPLES = RECORDS_PER_FILE * len(TRAIN_FILES)  # 50,000
NUM_TEST_EXAMPLES = RECORDS_PER_FILE * len(TEST_FILES)  # 10,000
CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
               'ship', 'truck')


class DataError(Exception):
  """The data is missing, malformed or cannot be fetched; the message says what to do."""


class DownloadFailed(DataError):
  """The archive could not be fetched (no network, bad address)."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of CIFAR-10 held in memory.

  Attributes:
    images: uint8 [N, 32, 32, 3], HWC.
    labels: int32 [N], values in 0..9.
  """
  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)


# --------------------------------------------------------------------------- locating data


def split_files(split):
  """The .bin file names of a split: 'train' (alias 'train_eval') or 'test'."""
  if split in ('train', 'train_eval'):
    return TRAIN_FILES
  if split == 'test':
    return TEST_FILES
  raise ValueError(f"unknown split {split!r}: expected 'train', 'train_eval' or 'test'")


def check_batches_dir(batches_dir, records_per_file=RECORDS_PER_FILE):
  """Raises DataError unless every .bin file is present with its exact size."""
  for name in TRAIN_FILES + TEST_FILES:
    path = os.path.join(batches_dir, name)
    if not os.path.isfile(path):
      raise DataError(f'{path} is missing: {batches_dir} must hold {", ".join(TRAIN_FILES)} '
                      f'and {TEST_FILES[0]}; delete the folder to extract it again.')
    _check_exact_size(path, os.path.getsize(path), records_per_file,
                      'Delete the folder and extract the archive again.')


def _check_exact_size(source, actual, records_per_file, remedy):
  """Raises DataError unless a .bin of `actual` bytes holds exactly records_per_file records."""
  expected = records_per_file * RECORD_BYTES
  if actual != expected:
    kind = 'truncated' if actual < expected else 'oversized'
    raise DataError(f'{source} is {kind}: expected {expected:,} bytes ({records_per_file:,} '
                    f'records of {RECORD_BYTES}), found {actual:,}. {remedy}')


def _is_writable_dir(path):
  # Root passes os.access on anything, so also honour the mode bits: a folder without
  # write bits (a read-only data folder in CI, say) is treated as read-only.
  try:
    mode = os.stat(path).st_mode
  except OSError:
    return False
  return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def default_extract_dir(data_dir):
  """data_dir when it is writable, else a per-user cache folder."""
  if _is_writable_dir(data_dir) or not os.path.exists(data_dir):
    return data_dir
  cache = os.environ.get('XDG_CACHE_HOME', os.path.join(os.path.expanduser('~'), '.cache'))
  return os.path.join(cache, 'cifar10')


def _make_writable_dir(path):
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise DataError(f'cannot create {path} ({e}): pass a writable --extract_dir.') from e


def _archive_members(archive, names, optional=()):
  """Yields (name, TarInfo, file object) for each regular member cifar-10-batches-bin/<name>.

  Only these members are ever read: a hostile archive's other entries (links, paths outside
  the folder) are skipped. Tar and gzip errors propagate to the caller, which names them.

  Raises:
    DataError: a member of `names` not in `optional` is missing.
  """
  wanted = {f'{BATCHES_DIR}/{name}': name for name in names}
  found = set()
  with tarfile.open(archive, 'r:*') as tar:
    for member in tar:
      path = member.name[2:] if member.name.startswith('./') else member.name
      if path in wanted and member.isfile():
        found.add(wanted[path])
        yield wanted[path], member, tar.extractfile(member)
  missing = sorted(set(names) - found - set(optional))
  if missing:
    raise DataError(f'{archive} lacks {", ".join(f"{BATCHES_DIR}/{n}" for n in missing)}: '
                    f'it is not the CIFAR-10 binary archive ({ARCHIVE_NAME}).')


def _corrupt_archive(archive, error):
  reason = ' '.join(str(error).split())  # tarfile lists each method tried on its own line.
  return DataError(f'{archive} is corrupt or unreadable ({type(error).__name__}: {reason}). '
                   f'Replace it with a fresh copy of {ARCHIVE_NAME}.')


ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


META_FILE_LIMIT = 1 << 16  # bytes: ten class names need a few dozen


def _extract_members(archive, staging, records_per_file):
  """Copies the data members (and the class names, when present) into staging.

  Each member's declared size is checked against the file's exact size before a byte is
  written, so a hostile archive cannot fill the disk with one oversized member.
  """
  names = TRAIN_FILES + TEST_FILES + (META_FILE,)
  for name, member, source in _archive_members(archive, names, optional=(META_FILE,)):
    if name == META_FILE:
      _check_at_most(f'{archive}:{name}', member.size, META_FILE_LIMIT)
    else:
      _check_exact_size(f'{archive}:{BATCHES_DIR}/{name}', member.size, records_per_file,
                        f'Replace the archive with a fresh copy of {ARCHIVE_NAME}.')
    with open(os.path.join(staging, name), 'wb') as out:
      shutil.copyfileobj(source, out, 1 << 20)


def extract_archive(archive, target_dir, records_per_file=RECORDS_PER_FILE):
  """Extracts the expected .bin members of `archive` into target_dir/cifar-10-batches-bin.

  Only the known member names are written, as regular files at paths built here, so a
  hostile archive cannot write outside target_dir. The folder appears atomically (rename);
  if another process finished the same extraction first, its folder is kept.

  Returns:
    The path of the extracted cifar-10-batches-bin folder.
  """
  _make_writable_dir(target_dir)
  final_dir = os.path.join(target_dir, BATCHES_DIR)
  try:
    staging = tempfile.mkdtemp(prefix='.extract-', dir=target_dir)
  except OSError as e:
    raise DataError(f'cannot write to {target_dir} ({e}): pass a writable --extract_dir.') from e
  try:
    _extract_members(archive, staging, records_per_file)
    if os.path.isdir(final_dir):
      check_batches_dir(final_dir, records_per_file)  # Raises if it is a broken copy.
    else:
      os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the data from other users.
      os.rename(staging, final_dir)
  except ARCHIVE_ERRORS as e:
    raise _corrupt_archive(archive, e) from e
  except OSError as e:
    raise DataError(f'extracting {archive} into {target_dir} failed ({e}): check that the '
                    'folder is writable and the disk has 200 MB free.') from e
  finally:
    if os.path.exists(staging):
      shutil.rmtree(staging, ignore_errors=True)
  return final_dir


def _md5(path):
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def download_archive(url, target_dir, md5=DATA_MD5, out=sys.stderr):
  """Downloads the archive to target_dir with a progress display and checks its md5."""
  _make_writable_dir(target_dir)
  path = os.path.join(target_dir, ARCHIVE_NAME)
  partial = path + '.part'
  try:
    with urllib.request.urlopen(url, timeout=30) as response, open(partial, 'wb') as f:
      total = int(response.headers.get('Content-Length') or 0)
      done = 0
      for chunk in iter(lambda: response.read(1 << 20), b''):
        f.write(chunk)
        done += len(chunk)
        shown = f'{done / total:6.1%}' if total else f'{done >> 20} MiB'
        out.write(f'\rdownloading {url}: {shown}')
        out.flush()
    out.write('\n')
  except (urllib.error.URLError, http.client.HTTPException, ValueError, OSError) as e:
    if os.path.exists(partial):
      os.remove(partial)
    raise DownloadFailed(f'the download of {url} failed ({e})') from e
  actual = _md5(partial)
  if md5 and actual != md5:
    os.remove(partial)
    raise DataError(f'downloaded {url} has md5 {actual}, expected {md5}: '
                    'the download is corrupt; run again.')
  os.replace(partial, path)
  return path


def find_batches_dir(data_dir, extract_dir=None, url=DATA_URL, md5=DATA_MD5,
                     records_per_file=RECORDS_PER_FILE):
  """Returns a checked cifar-10-batches-bin folder, extracting or downloading as needed.

  Looks, in order, for: data_dir/cifar-10-batches-bin; extract_dir/cifar-10-batches-bin;
  the archive (data_dir itself if it is a file, else data_dir/cifar-10-binary.tar.gz), which
  is extracted into extract_dir; else downloads the archive into extract_dir.

  Args:
    data_dir: folder holding the data or the archive, or the archive's own path.
    extract_dir: where to extract or download; default data_dir if writable, else
      ~/.cache/cifar10.
    url, md5: the download source and its checksum ('' skips the check).
    records_per_file: records expected in each .bin (tests use tiny files).
  """
  if os.path.isfile(data_dir):
    archive, data_dir = data_dir, os.path.dirname(data_dir) or '.'
  else:
    archive = os.path.join(data_dir, ARCHIVE_NAME)
  extract_dir = extract_dir or default_extract_dir(data_dir)
  for candidate in (os.path.join(data_dir, BATCHES_DIR), os.path.join(extract_dir, BATCHES_DIR)):
    if os.path.isdir(candidate):
      check_batches_dir(candidate, records_per_file)
      return candidate
  if not os.path.isfile(archive):
    try:
      archive = download_archive(url, extract_dir, md5)
    except DownloadFailed as e:
      raise DataError(f'no CIFAR-10 data in {data_dir} and {e}. Offline, put {ARCHIVE_NAME} '
                      f'in {data_dir} (or pass --data_dir=<the folder holding it>).') from e
  batches_dir = extract_archive(archive, extract_dir, records_per_file)
  check_batches_dir(batches_dir, records_per_file)
  return batches_dir


# --------------------------------------------------------------------------- decoding


def decode_records(raw, source):
  """Decodes the bytes of one .bin file; `source` names it in errors.

  Returns:
    images uint8 [N, 32, 32, 3] and labels int32 [N].
  """
  if not raw.size or raw.size % RECORD_BYTES:
    raise DataError(f'{source} holds {raw.size:,} bytes, not a whole number of '
                    f'{RECORD_BYTES}-byte records.')
  records = raw.reshape(-1, RECORD_BYTES)
  labels = records[:, 0].astype(np.int32)
  bad = np.flatnonzero(labels >= NUM_CLASSES)
  if bad.size:
    raise DataError(f'{source}: record {bad[0]} has label byte {labels[bad[0]]}, expected 0-9 '
                    f'({bad.size} bad records). The file is corrupt.')
  # Each record stores the red, green and blue planes one after another (CHW).
  images = records[:, LABEL_BYTES:].reshape(-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
  return np.ascontiguousarray(images.transpose(0, 2, 3, 1)), labels


def read_records(path):
  """Decodes one .bin file: images uint8 [N, 32, 32, 3] and labels int32 [N]."""
  try:
    raw = np.fromfile(path, dtype=np.uint8)
  except OSError as e:
    raise DataError(f'cannot read {path} ({e}).') from e
  return decode_records(raw, path)


def _split_from_parts(parts):
  return Split(images=np.concatenate([p[0] for p in parts]),
               labels=np.concatenate([p[1] for p in parts]))


def load_split(batches_dir, split):
  """Reads a whole split of a checked cifar-10-batches-bin folder into memory, in file order."""
  return _split_from_parts([read_records(os.path.join(batches_dir, name))
                            for name in split_files(split)])


def read_split(data_dir, split, records_per_file=RECORDS_PER_FILE):
  """A split from data_dir's extracted folder, or straight from its archive; writes nothing.

  For readers that need one split once (the NumPy int8 runner): the archive's members are
  decoded in memory instead of being extracted. Each file is checked before it is read to
  hold at most `records_per_file` records, and when decoded to hold whole records with
  labels 0-9.

  Args:
    data_dir: a folder holding cifar-10-batches-bin/ or the archive, or the archive itself.
    split: 'train', 'train_eval' or 'test'.
    records_per_file: the most records a .bin may hold.
  """
  limit = records_per_file * RECORD_BYTES
  folder = os.path.join(data_dir, BATCHES_DIR)
  archive = data_dir if os.path.isfile(data_dir) else os.path.join(data_dir, ARCHIVE_NAME)
  if os.path.isdir(folder):
    for name in split_files(split):
      path = os.path.join(folder, name)
      if not os.path.isfile(path):
        raise DataError(f'{path} is missing: {folder} must hold {", ".join(split_files(split))}.')
      _check_at_most(path, os.path.getsize(path), limit)
    return load_split(folder, split)
  if not os.path.isfile(archive):
    raise DataError(f'neither {folder} nor {archive} exists: pass the --data_dir given to '
                    'cifar10_train.py.')
  parts = {}
  try:
    for name, member, source in _archive_members(archive, split_files(split)):
      _check_at_most(f'{archive}:{name}', member.size, limit)
      parts[name] = decode_records(np.frombuffer(source.read(), np.uint8), f'{archive}:{name}')
  except (*ARCHIVE_ERRORS, OSError) as e:
    raise _corrupt_archive(archive, e) from e
  return _split_from_parts([parts[name] for name in split_files(split)])


def _check_at_most(source, size, limit):
  if size > limit:
    raise DataError(f'{source} is oversized: {size:,} bytes, at most {limit:,} expected '
                    f'({limit // RECORD_BYTES:,} records of {RECORD_BYTES}).')


def central_crop(images, size):
  """Central size x size crop of [B, 32, 32, C] images (NumPy arrays or tensors alike), as
  tf.image.resize_with_crop_or_pad crops."""
  offset = (IMAGE_SIZE - size) // 2
  return images[:, offset:offset + size, offset:offset + size, :]


def run(data_dir='data', url=DATA_URL):
  """Checks the data in data_dir (downloading it from `url` when absent) and prints its facts;
  returns what sys.exit takes (None when the data is whole, `error: ...` otherwise)."""
  try:
    batches_dir = find_batches_dir(data_dir, url=url)
    for split in ('train', 'test'):
      data = load_split(batches_dir, split)
      counts = np.bincount(data.labels, minlength=NUM_CLASSES)
      mean = data.images.reshape(-1, 3).mean(axis=0) / 255.0
      print(f'{split}: {len(data)} images, per class {counts.min()}-{counts.max()}, '
            f'first labels {data.labels[:10].tolist()}, RGB mean {np.round(mean, 4).tolist()}')
  except DataError as e:
    return f'error: {e}'
  return None


def main(argv):
  if len(argv) > 2:
    raise app.UsageError(f'expected at most one DATA_DIR, got {" ".join(argv[1:])}')
  sys.exit(run(*argv[1:]))


if __name__ == '__main__':
  app.run(main)
