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

Packing (file format 2), lossless: an int8 array whose values all fit 2 or 4 signed bits
(-2..1, -8..7: the weights of compress/qat.py --weight_bits=2 or 4) is stored four or two
values per byte as <key>/packed2 or <key>/packed4 (uint8, the first value in the lowest bits)
with its shape as <key>/packed2_shape (int64); the dense or sparse form is chosen first, so a
sparse array's `values` are packed too. `file_format` (uint8 [1]) holds the format's number;
a file without it is format 1 (no packing), read as before.

Coding (entropy coding, Deep Compression's last stage): save(..., coding='lzma') writes
the whole .npz through LZMA (the standard library's xz container, CRC-32 checked), which
codes the bitmasks, the packed values and the headers by their statistics; load() tells the
two apart by the xz magic bytes and inflates at most MAX_DECODED_BYTES. huffman_bytes gives
what a Huffman code of an array's bytes would take, for comparison.

Why a bitmask: at 90 % sparsity it costs 1 bit per weight where 32-bit indices would cost 3.2;
deflate (zlib, in the standard library) squeezes it further towards the entropy of the mask,
H(0.1) = 0.47 bit per weight, because long runs of zero bytes repeat. Each array is written in
whichever form is smaller, so a dense matrix never pays for a mask.
"""

import heapq
import io
import json
import lzma
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
FORMAT_ENTRY = 'file_format'
FORMAT = 2  # 1: narrowing and sparse forms; 2: and packed low-bit int8 arrays
PACKED_BITS = (2, 4)  # narrowest first
PACKED_PARTS = tuple(f'packed{bits}' for bits in PACKED_BITS)
SHAPE_SUFFIX = '_shape'
CODINGS = ('none', 'lzma')
XZ_MAGIC = b'\xfd7zXZ\x00'
MAX_DECODED_BYTES = 1 << 30  # an lzma-coded file inflates to at most this
LZMA_PRESET = 9 | lzma.PRESET_EXTREME
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


def packed_bits(array):
  """The fewest bits of PACKED_BITS that hold every value of an int8 array, or None."""
  if array.dtype != np.int8 or not array.size:
    return None
  low, high = int(array.min()), int(array.max())
  for bits in PACKED_BITS:
    if -(1 << (bits - 1)) <= low and high < 1 << (bits - 1):
      return bits
  return None


def pack_bits(array, bits):
  """int8 values of `bits` signed bits -> uint8, 8 // bits per byte, the first lowest."""
  per = 8 // bits
  flat = (array.reshape(-1).astype(np.int16) & ((1 << bits) - 1)).astype(np.uint8)
  flat = np.concatenate([flat, np.zeros(-flat.size % per, np.uint8)]).reshape(-1, per)
  shifts = (np.arange(per) * bits).astype(np.uint8)
  return np.bitwise_or.reduce(flat << shifts, axis=1).astype(np.uint8)


def unpack_bits(packed, bits, shape):
  """The int8 array of `shape` that pack_bits packed (the inverse), its size checked first."""
  shape = np.asarray(shape)
  if shape.ndim != 1 or shape.dtype.kind not in 'iu' or np.any(shape < 0):
    raise ValueError(f'corrupt packed array: its shape {shape.tolist()} is not a list of sizes')
  size, per = math.prod(int(d) for d in shape), 8 // bits
  if size > MAX_ENTRIES or packed.dtype != np.uint8 or packed.size != -(-size // per):
    raise ValueError(f'corrupt packed array: {packed.size} bytes of {packed.dtype} for '
                     f'{size:,} values of {bits} bits')
  shifts = (np.arange(per) * bits).astype(np.uint8)
  values = ((packed[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:size]
  half = 1 << (bits - 1)
  return ((values.astype(np.int16) ^ half) - half).astype(np.int8).reshape(shape)


def _packed(entries):
  """The entries with each int8 array of few enough bits packed (format 2)."""
  result = {}
  for key, array in entries.items():
    bits = packed_bits(array)
    if bits is None:
      result[key] = array
    else:
      result[f'{key}/packed{bits}'] = pack_bits(array, bits)
      result[f'{key}/packed{bits}{SHAPE_SUFFIX}'] = np.asarray(array.shape, np.int64)
  return result


def _unpacked(entries):
  """The entries with every packed array back as its int8 array (the inverse of _packed)."""
  result = {}
  for key, value in entries.items():
    name, _, part = key.rpartition('/')
    if part in PACKED_PARTS and name:
      shape = entries.get(f'{key}{SHAPE_SUFFIX}')
      if shape is None:
        raise ValueError(f'corrupt packed array {key}: its shape entry is missing')
      result[name] = unpack_bits(value, int(part[len('packed'):]), shape)
    elif not (part.endswith(SHAPE_SUFFIX) and part[:-len(SHAPE_SUFFIX)] in PACKED_PARTS):
      result[key] = value
  return result


def pack(arrays):
  """{name: array} -> {file entry: array}: each array narrowed where that is exact, sparse
  only where that is smaller, and packed where its int8 values fit 2 or 4 bits."""
  entries = {}
  reserved = SPARSE_PARTS + tuple(NARROWER) + PACKED_PARTS
  for name, array in arrays.items():
    last = name.rpartition('/')[2]
    if (not name or name in (META, FORMAT_ENTRY) or last in reserved
        or last.endswith(SHAPE_SUFFIX)):
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
  return _packed(entries)


def unpack(entries):
  """{file entry: array} -> {name: dense array} (the inverse of `pack`)."""
  entries = _unpacked(entries)
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


def lzma_bytes(data):
  """Bytes of `data` (bytes or an array's buffer) coded by LZMA as save() codes a file."""
  return len(lzma.compress(bytes(data), preset=LZMA_PRESET))


def huffman_bytes(data):
  """Bytes a Huffman code of `data`'s bytes takes: the coded bits, rounded up, plus one byte
  per symbol for the code lengths of its table (a canonical code)."""
  counts = np.bincount(np.frombuffer(bytes(data), np.uint8), minlength=256)
  symbols = [int(c) for c in counts if c]
  if len(symbols) <= 1:
    return len(symbols) + (1 if symbols else 0)
  # The coded bits equal the sum of the merged weights of Huffman's construction.
  heap, bits = list(symbols), 0
  heapq.heapify(heap)
  while len(heap) > 1:
    merged = heapq.heappop(heap) + heapq.heappop(heap)
    bits += merged
    heapq.heappush(heap, merged)
  return -(-bits // 8) + len(symbols)


def save(path, arrays, meta, coding='none'):
  """Writes {name: array} and a JSON-able `meta` dict as one uncompressed .npz at `path`,
  with coding='lzma' coded whole (CODINGS).

  Returns:
    The payload bytes of the arrays as stored (`nbytes` of `pack`), without meta, headers
    and coding.
  """
  if coding not in CODINGS:
    raise ValueError(f'coding={coding!r}: expected one of {CODINGS}')
  entries = pack(arrays)
  payload = nbytes(entries)
  entries[META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
  entries[FORMAT_ENTRY] = np.asarray([FORMAT], np.uint8)
  buffer = io.BytesIO()
  np.savez(buffer, **entries)
  data = buffer.getvalue()
  if coding == 'lzma':
    data = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                         preset=LZMA_PRESET)
  partial = os.fspath(path) + '.part'  # Renamed once whole: never a truncated model file.
  try:
    with open(partial, 'wb') as f:
      f.write(data)
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
  with open(path, 'rb') as f:
    if os.fstat(f.fileno()).st_size > MAX_DECODED_BYTES:
      raise FormatError(f'{path} is over {MAX_DECODED_BYTES:,} bytes: no model file is')
    raw = f.read()
  try:
    if raw.startswith(XZ_MAGIC):
      raw = _inflate(raw)
    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
      entries = {key: data[key] for key in data.files}
    meta = json.loads(entries.pop(META).tobytes().decode())
    version = int(entries.pop(FORMAT_ENTRY, np.ones(1, np.uint8)).reshape(-1)[0])
    if version > FORMAT:
      raise FormatError(f'{path} is of file format {version}; this code reads formats up to '
                        f'{FORMAT}: update the project to read it')
    return unpack(entries), meta
  except (zipfile.BadZipFile, EOFError, KeyError, ValueError, zlib.error, lzma.LZMAError) as e:
    raise FormatError(f'{path} is truncated, corrupt or not written by compress/ '
                      f'({type(e).__name__}: {e})') from e


def _inflate(raw):
  """The .npz inside an lzma-coded file, at most MAX_DECODED_BYTES (a crafted file cannot
  inflate to gigabytes)."""
  inflate = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
  data = inflate.decompress(raw, max_length=MAX_DECODED_BYTES)
  if not inflate.eof:
    raise ValueError('its lzma stream ends early or inflates past '
                     f'{MAX_DECODED_BYTES:,} bytes')
  return data
