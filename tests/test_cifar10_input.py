"""Tests for cifar10_input: the batched distortions and the tf.data pipelines."""

import numpy as np
import pytest
import tensorflow as tf

import cifar10_input
import cifar10_records
from fixtures import tiny_split


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


def _rectangle(mask):
  """(height, width) if the True cells of a 2-D mask form one filled rectangle, else None."""
  rows, cols = np.nonzero(mask)
  if not len(rows):
    return (0, 0)
  height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
  return (height, width) if height * width == len(rows) else None


def test_crop_flip_at_32_takes_a_window_of_the_image_padded_by_4():
  images = tf.fill([64, 32, 32, 3], tf.constant(200, tf.uint8))  # Constant: only padding shows.
  out = cifar10_input.distort_batch(images, seed(5, 6), 32, distortions='crop_flip').numpy()
  assert out.shape == (64, 32, 32, 3)
  shapes = set()
  for image in out[..., 0]:
    inside = image > image.min() if image.min() < image.max() else np.ones_like(image, bool)
    shape = _rectangle(inside)
    assert shape is not None and 28 <= shape[0] <= 32 and 28 <= shape[1] <= 32
    shapes.add(shape)
  assert len(shapes) > 5  # The offsets vary over the 9 x 9 positions.


def test_crop_slack_4_pads_by_2_at_32_and_crops_the_central_28_at_24():
  constant = tf.fill([64, 32, 32, 3], tf.constant(200, tf.uint8))  # Only padding shows.
  out = cifar10_input.distort_batch(constant, seed(5, 7), 32, distortions='crop_flip',
                                    crop_slack=4).numpy()
  inside = [_rectangle(image > image.min()) if image.min() < image.max() else (32, 32)
            for image in out[..., 0]]
  assert all(30 <= h <= 32 and 30 <= w <= 32 for h, w in inside)
  assert len(set(inside)) > 3  # The offsets vary over the 5 x 5 positions.
  images = tf.constant(np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3)), tf.uint8)
  out = cifar10_input.distort_batch(images, seed(7, 8), 24, distortions='crop_flip',
                                    crop_slack=4)
  crop_seed = tf.random.experimental.stateless_split(seed(7, 8), 2)[0]
  window = cifar10_input.random_crop_and_flip(images[:, 2:30, 2:30], crop_seed, 24)
  expected = cifar10_input.standardize(tf.cast(window, tf.float32))
  np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)


def test_crop_flip_at_24_is_the_tutorials_window_without_colour_changes():
  images = tf.constant(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)), tf.uint8)
  out = cifar10_input.distort_batch(images, seed(7, 8), 24, distortions='crop_flip')
  crop_seed = tf.random.experimental.stateless_split(seed(7, 8), 2)[0]
  window = cifar10_input.random_crop_and_flip(images, crop_seed, 24)
  expected = cifar10_input.standardize(tf.cast(window, tf.float32))
  np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)


def test_crop_flip_mean_crops_the_standardized_image_padded_with_its_mean():
  images = tf.constant(np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3)), tf.uint8)
  out = cifar10_input.distort_batch(images, seed(7, 9), 32, distortions='crop_flip_mean')
  crop_seed = tf.random.experimental.stateless_split(seed(7, 9), 2)[0]
  standardized = cifar10_input.standardize(tf.cast(images, tf.float32))
  padded = tf.pad(standardized, [[0, 0], [4, 4], [4, 4], [0, 0]])
  expected = cifar10_input.random_crop_and_flip(padded, crop_seed, 32)
  np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-6)
  # Every pixel is one of the evaluation's standardized values or the padding's 0.
  evaluated = set(np.round(standardized.numpy().reshape(-1), 5)) | {0.0}
  assert set(np.round(out.numpy().reshape(-1), 5)) <= evaluated


def test_cutout_zeroes_one_square_clipped_at_the_edges():
  images = tf.ones([200, 32, 32, 1])
  out = cifar10_input.cutout(images, seed(9, 9), 8).numpy()[..., 0]
  shapes = [_rectangle(image == 0) for image in out]
  assert None not in shapes
  assert all(h <= 8 and w <= 8 for h, w in shapes)
  assert (8, 8) in shapes and any(h < 8 or w < 8 for h, w in shapes)  # Some clipped.
  assert set(np.unique(out)) == {0.0, 1.0}


def test_a_replicas_share_is_distorted_as_in_the_whole_batch_with_cutout():
  images = tf.constant(np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3)), tf.uint8)
  whole = cifar10_input.distort_batch(images, seed(3, 3), 32, None, 'crop_flip', 12)
  halves = [cifar10_input.distort_batch(images[first:first + 4], seed(3, 3), 32, (first, 8),
                                        'crop_flip', 12) for first in (0, 4)]
  np.testing.assert_allclose(np.concatenate(halves), whole.numpy(), atol=1e-6)


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
  crop = cifar10_records.central_crop(images, 24).numpy()
  np.testing.assert_array_equal(crop, images.numpy()[:, 4:28, 4:28, :])
  np.testing.assert_array_equal(crop, tf.image.resize_with_crop_or_pad(images, 24, 24).numpy())


def test_central_crop_identity_for_32():
  images = position_images(3)
  np.testing.assert_array_equal(cifar10_records.central_crop(images, 32).numpy(), images.numpy())


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


def indexed_split(num):
  """Image i is dark but for a bright row i (num <= 32), its label i: whatever the
  standardization, a batch shows which images it took."""
  images = np.zeros((num, 32, 32, 3), np.uint8)
  images[np.arange(num), np.arange(num)] = 255
  return cifar10_records.Split(images=images, labels=np.arange(num, dtype=np.int32))


def test_each_epoch_visits_every_image_once_in_a_new_order():
  split = indexed_split(20)  # 8 per batch: 2 steps an epoch, 4 images left out each epoch.
  data = cifar10_input.train_inputs(split, batch_size=8, seed=1, augment=False, image_size=32)
  labels = [batch[1].numpy() for batch in data.take(6)]
  epochs = [np.concatenate(labels[i:i + 2]) for i in range(0, 6, 2)]
  for epoch in epochs:
    assert len(set(epoch)) == 16  # No image twice within an epoch.
  assert len({tuple(epoch) for epoch in epochs}) == 3  # Reshuffled every epoch.
  images, labels = next(iter(data))  # A batch's images are the ones its labels name.
  np.testing.assert_array_equal(np.argmax(images.numpy()[:, :, 0, 0], axis=1), labels)


def test_a_pipeline_started_at_step_k_gives_the_batches_of_step_k_on():
  """What makes a resumed run equal to an uninterrupted one: batches indexed by the step."""
  split = tiny_split(20)
  whole = list(cifar10_input.train_inputs(split, batch_size=8, seed=3).take(9))
  for first_step in (1, 2, 5):  # Within the first epoch, at an epoch's start, mid-epoch.
    resumed = cifar10_input.train_inputs(split, batch_size=8, seed=3, first_step=first_step)
    for expected, got in zip(whole[first_step:], resumed.take(9 - first_step)):
      np.testing.assert_array_equal(expected[0], got[0])  # Same images, same distortions.
      np.testing.assert_array_equal(expected[1], got[1])
  other = next(iter(cifar10_input.train_inputs(split, batch_size=8, seed=4)))
  assert not np.array_equal(other[0], whole[0][0])


@pytest.mark.parametrize('augment', [True, False])
def test_the_replicas_shares_of_a_step_are_the_one_device_batch_split_in_order(augment):
  """What makes a 2-replica step equal a 1-replica one: the same images, distorted alike."""
  split = tiny_split(40)
  whole = list(cifar10_input.train_inputs(split, 8, seed=5, augment=augment,
                                          first_step=3).take(4))
  both = list(cifar10_input.train_inputs(split, 8, seed=5, augment=augment, first_step=3,
                                         replicas=(0, 2, 2)).take(8))
  second = list(cifar10_input.train_inputs(split, 8, seed=5, augment=augment, first_step=3,
                                           replicas=(1, 1, 2)).take(4))
  for step in range(4):
    images, labels = whole[step]
    np.testing.assert_array_equal(np.concatenate([both[2 * step][1], both[2 * step + 1][1]]),
                                  labels)
    np.testing.assert_array_equal(np.concatenate([both[2 * step][0], both[2 * step + 1][0]]),
                                  images)
    np.testing.assert_array_equal(second[step][0], images[4:])  # Worker 1 of 2: its half.
  with pytest.raises(ValueError, match='does not split'):
    cifar10_input.train_inputs(split, 9, seed=5, replicas=(0, 2, 2))


def test_a_batch_larger_than_the_split_is_refused():
  with pytest.raises(ValueError, match='batch_size=21 exceeds the 20 training images'):
    cifar10_input.train_inputs(tiny_split(20), batch_size=21, seed=0)


def test_eval_images_are_every_image_in_order_across_chunks():
  split = tiny_split(10)
  images = cifar10_input.eval_images(split, chunk=3)  # Chunks of 3, 3, 3, 1.
  assert images.shape == (10, 24, 24, 3) and images.dtype == tf.float32
  np.testing.assert_array_equal(images, cifar10_input.eval_batch(split.images, 24))


