"""Tests of the sparse model file: exact round trips, and the smaller form chosen per array."""

import os
import zlib

import numpy as np
import pytest

from compress import sparse


def random_sparse(shape, sparsity, dtype=np.float32, seed=0):
  rng = np.random.default_rng(seed)
  values = rng.normal(size=shape).astype(np.float32)
  if np.issubdtype(dtype, np.integer):
    values = rng.integers(1, 127, size=shape) * rng.choice([-1, 1], size=shape)
  values = values.astype(dtype)
  values[rng.random(shape) < sparsity] = 0
  return values


@pytest.mark.parametrize('dtype', [np.float32, np.int8])
def test_encode_decode_round_trip_is_exact(dtype):
  array = random_sparse((5, 5, 64, 64), 0.9, dtype)
  parts = sparse.encode(array)
  assert parts['values'].dtype == dtype
  assert parts['values'].size == np.count_nonzero(array)
  np.testing.assert_array_equal(sparse.decode(**parts), array)


def test_mask_is_a_deflated_bitmask_in_c_order():
  array = np.array([[0, 2.5, 0], [0, 0, -1]], np.float32)
  parts = sparse.encode(array)
  bits = np.unpackbits(np.frombuffer(zlib.decompress(parts['mask'].tobytes()), np.uint8))
  np.testing.assert_array_equal(bits[:6], [0, 1, 0, 0, 0, 1])
  np.testing.assert_array_equal(parts['values'], [2.5, -1])
  np.testing.assert_array_equal(parts['shape'], [2, 3])


def test_a_mask_that_disagrees_with_the_values_is_refused():
  parts = sparse.encode(random_sparse((100,), 0.5))
  with pytest.raises(ValueError, match='corrupt sparse array'):
    sparse.decode(parts['shape'], parts['mask'], parts['values'][1:])


def test_pack_stores_dense_arrays_densely_and_sparse_ones_sparsely():
  arrays = {'conv1/kernel': random_sparse((5, 5, 3, 64), 0.9),
            'conv1/bias': np.linspace(-1, 1, 64).astype(np.float32)}
  entries = sparse.pack(arrays)
  assert sorted(entries) == ['conv1/bias', 'conv1/kernel/mask', 'conv1/kernel/shape',
                             'conv1/kernel/values']
  # 10 % of 4,800 float32 values plus a mask well under 4,800 / 8 bytes.
  assert sparse.nbytes(entries) < 0.1 * 4800 * 4 + 600 + 64 * 4 + 16


def test_save_load_round_trip(tmp_path):
  arrays = {'conv1/kernel': random_sparse((5, 5, 3, 64), 0.9),
            'local3/kernel': random_sparse((2304, 384), 0.95, seed=1),
            'local3/bias': np.ones(384, np.float32),
            'q/kernel': random_sparse((3, 3, 8, 8), 0.8, np.int8)}
  path = tmp_path / 'model.npz'
  payload = sparse.save(path, arrays, {'model': 'tutorial', 'image_size': 24})
  assert payload == sparse.nbytes(sparse.pack(arrays))
  loaded, meta = sparse.load(path)
  assert meta == {'model': 'tutorial', 'image_size': 24}
  assert sorted(loaded) == sorted(arrays)
  for name, array in arrays.items():
    assert loaded[name].dtype == array.dtype
    np.testing.assert_array_equal(loaded[name], array)
  dense_bytes = sum(a.nbytes for a in arrays.values())
  assert path.stat().st_size < 0.2 * dense_bytes


def test_save_leaves_no_partial_file_and_a_truncated_file_is_named(tmp_path):
  path = tmp_path / 'model.npz'
  sparse.save(path, {'w': np.ones((4, 4), np.float32)}, {'model': 'tutorial'})
  assert sorted(p.name for p in tmp_path.iterdir()) == ['model.npz']
  truncated = tmp_path / 'cut.npz'
  truncated.write_bytes(path.read_bytes()[:-40])
  with pytest.raises(sparse.FormatError, match=f'{truncated} is truncated, corrupt'):
    sparse.load(truncated)


def test_arrays_are_narrowed_only_where_exact_and_come_back_in_their_own_dtype(tmp_path):
  arrays = {'fits_int16': np.array([-32768, 0, 32767], np.int32),
            'fits_int8': np.array([-128, 5, 127], np.int64),
            'needs_int32': np.array([-32769, 1], np.int32),
            'half_exact': np.array([2.0**-14, 0.5, 1 + 2.0**-10, 65504], np.float32),
            'not_half': np.array([0.1, 1.0], np.float32),  # 0.1 is not a float16 number
            'too_big': np.array([1e5], np.float32),  # beyond float16's 65,504
            'subnormal': np.array([2.0**-24], np.float32),  # float16's smallest: still exact
            'sparse_int32': np.array([0] * 30 + [300, -7], np.int32)}
  entries = sparse.pack(arrays)
  assert entries['fits_int16/int32'].dtype == np.int16
  assert entries['fits_int8/int64'].dtype == np.int8
  assert entries['half_exact/float32'].dtype == np.float16
  assert entries['subnormal/float32'].dtype == np.float16
  for name in ('needs_int32', 'not_half', 'too_big'):
    assert entries[name].dtype == arrays[name].dtype
  assert entries['sparse_int32/int32/values'].dtype == np.int16
  # 3 x 2 + 3 + 2 x 4 + 4 x 2 + 2 x 4 + 4 + 2 bytes, then the sparse one's shape, mask, values.
  assert sparse.nbytes(entries) == 6 + 3 + 8 + 8 + 8 + 4 + 2 + (8 + len(
      entries['sparse_int32/int32/mask']) + 4)
  sparse.save(tmp_path / 'm.npz', arrays, {})
  loaded, _ = sparse.load(tmp_path / 'm.npz')
  assert sorted(loaded) == sorted(arrays)
  for name, array in arrays.items():
    assert loaded[name].dtype == array.dtype, name
    np.testing.assert_array_equal(loaded[name], array)


@pytest.mark.parametrize('name', ['', 'meta', 'conv1/mask', 'x/values', 'y/shape', 'b/int32',
                                  's/float32'])
def test_reserved_names_are_refused(name):
  with pytest.raises(ValueError, match='reserved'):
    sparse.pack({name: np.zeros(3, np.float32)})


def test_a_mask_that_does_not_inflate_is_refused():
  parts = sparse.encode(random_sparse((100,), 0.5))
  with pytest.raises(ValueError, match='does not inflate'):
    sparse.decode(parts['shape'], parts['mask'][:-3], parts['values'])


def test_a_crafted_mask_or_shape_is_refused_before_it_is_allocated():
  parts = sparse.encode(random_sparse((100,), 0.5))
  bomb = np.frombuffer(zlib.compress(bytes(1 << 24), 9), np.uint8)  # 16 MiB of zeros.
  with pytest.raises(ValueError, match='inflates to more than the 13 bytes of 100 entries'):
    sparse.decode(parts['shape'], bomb, parts['values'])
  huge = np.asarray([100000, 100000, 100000], np.int64)  # 1e15 entries.
  with pytest.raises(ValueError, match='declares 1,000,000,000,000,000 entries'):
    sparse.decode(huge, parts['mask'], parts['values'])
  with pytest.raises(ValueError, match='is not a list of sizes'):
    sparse.decode(np.asarray([-1, 5], np.int64), parts['mask'], parts['values'])


@pytest.mark.parametrize('bits,low,high', [(4, -8, 7), (2, -2, 1)])
def test_low_bit_int8_arrays_pack_several_per_byte_and_come_back_exactly(bits, low, high):
  rng = np.random.default_rng(bits)
  array = rng.integers(low, high + 1, size=(3, 3, 5, 7)).astype(np.int8)  # 315: not a multiple
  packed = sparse.pack_bits(array, bits)
  assert packed.dtype == np.uint8 and packed.size == -(-array.size // (8 // bits))
  np.testing.assert_array_equal(sparse.unpack_bits(packed, bits, array.shape), array)
  # By hand: the first value in the lowest bits (4 bits: -1 is 0b1111, 2 is 0b0010).
  if bits == 4:
    np.testing.assert_array_equal(sparse.pack_bits(np.array([-1, 2, 7], np.int8), 4),
                                  [0b00101111, 0b0111])
  else:
    np.testing.assert_array_equal(sparse.pack_bits(np.array([1, -1, 0, -2, 1], np.int8), 2),
                                  [0b10001101, 0b01])
  assert sparse.packed_bits(array) == bits
  assert sparse.packed_bits(np.array([high + 1], np.int8)) == (4 if bits == 2 else None)
  entries = sparse.pack({'conv/weights': array})
  assert sorted(entries) == [f'conv/weights/packed{bits}', f'conv/weights/packed{bits}_shape']
  np.testing.assert_array_equal(sparse.unpack(entries)['conv/weights'], array)


def test_a_sparse_low_bit_array_packs_its_values_and_the_file_says_format_2(tmp_path):
  array = random_sparse((64, 64), 0.9, np.int8) % 8 - 4  # values -4..3, 90 % zeros before
  array[np.random.default_rng(1).random(array.shape) < 0.9] = 0
  entries = sparse.pack({'w': array})
  assert 'w/values/packed4' in entries and 'w/mask' in entries
  sparse.save(tmp_path / 'm.npz', {'w': array}, {})
  with np.load(tmp_path / 'm.npz') as data:
    assert data[sparse.FORMAT_ENTRY].tolist() == [sparse.FORMAT] == [2]
  loaded, _ = sparse.load(tmp_path / 'm.npz')
  np.testing.assert_array_equal(loaded['w'], array)


def test_a_format_1_file_still_reads_and_a_newer_format_is_named(tmp_path):
  array = np.arange(-3, 3, dtype=np.int8)
  # Format 1: the int8 array as it is, no format entry.
  np.savez(tmp_path / 'old.npz', w=array, meta=np.frombuffer(b'{}', np.uint8))
  loaded, meta = sparse.load(tmp_path / 'old.npz')
  np.testing.assert_array_equal(loaded['w'], array)
  assert meta == {}
  np.savez(tmp_path / 'new.npz', w=array, meta=np.frombuffer(b'{}', np.uint8),
           file_format=np.array([3], np.uint8))
  with pytest.raises(sparse.FormatError, match='file format 3'):
    sparse.load(tmp_path / 'new.npz')


@pytest.mark.parametrize('name', ['w/packed4', 'w/packed2_shape', 'file_format'])
def test_names_of_the_packed_form_are_reserved(name):
  with pytest.raises(ValueError, match='reserved'):
    sparse.pack({name: np.zeros(3, np.float32)})


def test_a_packed_array_of_the_wrong_size_is_a_corrupt_file():
  with pytest.raises(ValueError, match='corrupt packed array'):
    sparse.unpack_bits(np.zeros(3, np.uint8), 4, np.array([100], np.int64))


def test_an_lzma_coded_file_reads_back_the_same_and_is_smaller(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {'w': np.where(rng.random((256, 256)) < 0.9, 0,
                          np.round(rng.normal(size=(256, 256)) * 2).clip(-7, 7)).astype(np.int8),
            'b': np.arange(256, dtype=np.int32) * 1000}
  plain, coded = tmp_path / 'plain.npz', tmp_path / 'coded.npz.xz'
  assert sparse.save(plain, arrays, {'a': 1}) == sparse.save(coded, arrays, {'a': 1},
                                                             coding='lzma')
  assert coded.read_bytes().startswith(sparse.XZ_MAGIC)
  assert os.path.getsize(coded) < 0.8 * os.path.getsize(plain)
  for path in (plain, coded):
    loaded, meta = sparse.load(path)
    assert meta == {'a': 1}
    for name, array in arrays.items():
      assert loaded[name].dtype == array.dtype
      np.testing.assert_array_equal(loaded[name], array)
  damaged = tmp_path / 'damaged.npz.xz'
  data = bytearray(coded.read_bytes())
  data[len(data) // 2] ^= 0xFF
  damaged.write_bytes(bytes(data))
  with pytest.raises(sparse.FormatError, match='damaged.npz.xz'):
    sparse.load(damaged)
  damaged.write_bytes(coded.read_bytes()[:-20])
  with pytest.raises(sparse.FormatError, match='ends early'):
    sparse.load(damaged)


def test_huffman_bytes_by_hand():
  # a:4, b:2, c:1, d:1 -> lengths 1, 2, 3, 3: 4 + 4 + 3 + 3 = 14 bits = 2 bytes, + 4 for the table.
  assert sparse.huffman_bytes(b'aaaabbcd') == 2 + 4
  assert sparse.huffman_bytes(b'') == 0 and sparse.huffman_bytes(b'zzzz') == 2
