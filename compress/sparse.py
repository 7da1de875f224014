"""The sparse file format of pruned (and later quantized) models, in NumPy only.

A model file is one uncompressed .npz holding, for each array of the model under its name
(<key> below: the name, or <name>/<dtype> for an array stored narrower, see Narrowing):
  dense:   <key>                  the array (biases, matrices left dense)
  sparse:  <key>/shape            int64 [rank]
           <key>/mask             uint8: zlib-deflated np.packbits(array != 0), C order
           <key>/values           the nonzero entries in C order, in the stored dtype
and `meta`, UTF-8 JSON as uint8 bytes (model name, image size, anything the writer adds;
a NumPy string array would spend 4 bytes per character).

Narrowing, lossless: an integer array whose values all fit a narrower signed type (an int32
bias that fits int16), or a float array whose values are all exact in float16 (weight
scales that compress/quantize.py --weight_scales=float16 put on the float16 grid), is stored in that narrower type under
<name>/<its own dtype> (e.g. `conv1/bias/int32`), and widened back when loaded; the sparse
form then applies to the narrowed array (`conv1/bias/int32/values`, ...). Loading gives
back an array equal to the one saved, dtype and shape included (a -0.0 of a sparse array
comes back as 0.0: the mask counts it as zero).

Why a bitmask: at 90 % sparsity it costs 1 bit per weight where 32-bit indices would cost 3.2;
deflate (zlib, in the standard library) squeezes it further towards the entropy of the mask,
H(0.1) = 0.47 bit per weight, because long runs of zero bytes repeat. Each array is written in
whichever form is smaller, so a dense matrix never pays for a mask.
"""

import json
import math
import os
import zipfile
import zlib

import numpy as np

ZLIB_LEVEL = 9  # Smallest output; the masks are small, so the time does not matter.
SPARSE_PARTS = ('shape', 'mask', 'values')
NARROWER = {'int64': ('int8', 'int16', 'int32'), 'int32': ('int8', 'int16'), 'int16': ('int8',),
            'float64': ('float16', 'float32'), 'float32': ('float16',)}  # narrowest first
META = 'meta'
FLOAT32_BYTES = 4  # what a dense float32 weight costs, the baseline of every size report


def encode(array):
  """The three arrays of `array`'s sparse form: shape, deflated bitmask, nonzero values."""
  array = np.asarray(array)
  nonzero = array.reshape(-1) != 0
  mask = zlib.compress(np.packbits(nonzero).tobytes(), ZLIB_LEVEL)
  return {'shape': np.asarray(array.shape, np.int64),
          'mask': np.frombuffer(mask, np.uint8),
          'values': array.reshape(-1)[nonzero]}


MAX_ENTRIES = 1 << 28  # per array: 268M entries, 1 GiB of float32, far past any model here


def decode(shape, mask, values):
  """The dense array of a sparse form (the inverse of `encode`).

  The declared shape is checked against MAX_ENTRIES and the mask inflated to at most the
  bytes that shape needs, before anything that size is allocated: a crafted file cannot
  make a small mask inflate to gigabytes.
  """
  shape = np.asarray(shape)
  if shape.ndim != 1 or shape.dtype.kind not in 'iu' or np.any(shape < 0):
    raise ValueError(f'corrupt sparse array: its shape {shape.tolist()} is not a list of sizes')
  size = math.prod(int(d) for d in shape)
  if size > MAX_ENTRIES:
    raise ValueError(f'corrupt sparse array: its shape {shape.tolist()} declares {size:,} '
                     f'entries, more than the {MAX_ENTRIES:,} allowed')
  inflate = zlib.decompressobj()
  try:
    bits = inflate.decompress(mask.tobytes(), (size + 7) // 8 + 1)
  except zlib.error as e:
    raise ValueError(f'corrupt sparse array: its mask does not inflate ({e})') from e
  if inflate.unconsumed_tail:
    raise ValueError(f'corrupt sparse array: its mask inflates to more than the '
                     f'{(size + 7) // 8:,} bytes of {size:,} entries')
  if not inflate.eof:
    raise ValueError('corrupt sparse array: its mask does not inflate (the stream ends early)')
  nonzero = np.unpackbits(np.frombuffer(bits, np.uint8))[:size]
  if nonzero.size != size or int(nonzero.sum()) != values.size:
    raise ValueError(f'corrupt sparse array: its mask covers {nonzero.size} of {size} entries '
                     f'with {int(nonzero.sum())} ones, for {values.size} values')
  dense = np.zeros(size, values.dtype)
  dense[nonzero.astype(bool)] = values
  return dense.reshape(shape)


def nbytes(parts):
  """Payload bytes of a dict of arrays (what the .npz holds, before its per-entry headers)."""
  return sum(np.asarray(part).nbytes for part in parts.values())


def narrow(array):
  """`array` in the narrowest type of NARROWER that holds every value exactly, or None."""
  for dtype in NARROWER.get(array.dtype.name, ()):
    with np.errstate(over='ignore'):  # A float too large for float16 becomes inf: not exact.
      narrowed = array.astype(dtype)
    if np.array_equal(narrowed.astype(array.dtype), array):
      return narrowed
  return None


def pack(arrays):
  """{name: array} -> {file entry: array}: each array narrowed where that is exact, and
  sparse only where that is smaller."""
  entries = {}
  for name, array in arrays.items():
    if not name or name == META or name.rpartition('/')[2] in SPARSE_PARTS + tuple(NARROWER):
      raise ValueError(f'array name {name!r} is reserved by the file format')
    array = np.asarray(array)
    narrowed = narrow(array)
    if narrowed is not None:
      name, array = f'{name}/{array.dtype.name}', narrowed
    sparse = encode(array)
    if nbytes(sparse) < array.nbytes:
      entries.update({f'{name}/{part}': value for part, value in sparse.items()})
    else:
      entries[name] = array
  return entries


def unpack(entries):
  """{file entry: array} -> {name: dense array} (the inverse of `pack`)."""
  stored = {}
  for key, value in entries.items():
    name, _, part = key.rpartition('/')
    if part in SPARSE_PARTS and name:
      if part == 'shape':
        stored[name] = decode(value, entries[f'{name}/mask'], entries[f'{name}/values'])
    else:
      stored[key] = value
  arrays = {}
  for key, value in stored.items():
    name, _, dtype = key.rpartition('/')
    if dtype in NARROWER and name:
      arrays[name] = value.astype(dtype)
    else:
      arrays[key] = value
  return arrays


class FormatError(ValueError):
  """A file that `load` cannot read."""


def save(path, arrays, meta):
  """Writes {name: array} and a JSON-able `meta` dict as one uncompressed .npz at `path`.

  Returns:
    The payload bytes of the arrays as stored (`nbytes` of `pack`), without meta and headers.
  """
  entries = pack(arrays)
  payload = nbytes(entries)
  entries[META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
  partial = os.fspath(path) + '.part'  # Renamed once whole: never a truncated model file.
  try:
    with open(partial, 'wb') as f:
      np.savez(f, **entries)
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return payload


def load(path):
  """(arrays, meta) from a file written by `save`: {name: dense array}, dict.

  Raises:
    OSError: the file cannot be opened.
    FormatError: it is truncated, corrupt or not a file written by `save`.
  """
  try:
    with np.load(path, allow_pickle=False) as data:
      entries = {key: data[key] for key in data.files}
    meta = json.loads(entries.pop(META).tobytes().decode())
    return unpack(entries), meta
  except (zipfile.BadZipFile, EOFError, KeyError, ValueError, zlib.error) as e:
    raise FormatError(f'{path} is truncated, corrupt or not written by compress/ '
                      f'({type(e).__name__}: {e})') from e
