"""The tutorial's TensorFlow input pipelines over CIFAR-10 held in memory.

Training batches get the tutorial's distortions (random 24x24 crop, flip, brightness and
contrast, then per-image standardization); evaluation images the central crop and
standardization. Finding and decoding the records is cifar10_records.py's job (no
TensorFlow there).

Augmentation runs on whole batches with stateless random ops, so one batch costs a handful
of tensor ops instead of 128 per-image map calls, and a given seed always gives the same
distortions.
"""

import tensorflow as tf

import cifar10_records

STORED_SIZE = cifar10_records.IMAGE_SIZE  # 32: the side of the images as stored
# The tutorial's distortions (docs/design.md), on the 0-255 scale.
CROP_SIZE = 24
MAX_BRIGHTNESS_DELTA = 63.0
CONTRAST_RANGE = (0.2, 1.8)


# --------------------------------------------------------------------------- distortions


def standardize(images):
  """Per-image standardization of float images [B, H, W, C] (tf.image's formula)."""
  return tf.image.per_image_standardization(images)


def random_crop_and_flip(images, seed, size=CROP_SIZE):
  """Crops a random size x size window from each image and mirrors half of them.

  Args:
    images: [B, 32, 32, C] of any dtype.
    seed: int32 [2] stateless seed.
    size: side of the crop.

  Returns:
    [B, size, size, C], same dtype.
  """
  batch, channels = tf.shape(images)[0], images.shape[-1]
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  offsets = tf.random.stateless_uniform([batch, 2], crop_seed, 0, STORED_SIZE - size + 1,
                                        dtype=tf.int32)
  flip = tf.random.stateless_uniform([batch], flip_seed) < 0.5
  window = tf.range(size)
  rows = offsets[:, :1] + window  # [B, size]
  cols = offsets[:, 1:] + tf.where(flip[:, None], size - 1 - window, window)  # Mirrored: reversed.
  # One gather of whole pixels by their flat index: 3x faster than gathering rows, then
  # columns, then selecting between the crops and their mirror images (same output).
  pixels = tf.reshape(rows[:, :, None] * STORED_SIZE + cols[:, None, :], [batch, size * size])
  flat = tf.reshape(images, [batch, STORED_SIZE * STORED_SIZE, channels])
  return tf.reshape(tf.gather(flat, pixels, batch_dims=1), [batch, size, size, channels])


def random_brightness_and_contrast(images, seed):
  """The tutorial's per-image brightness (+-63) then contrast (0.2..1.8) on float images."""
  batch = tf.shape(images)[0]
  brightness_seed, contrast_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  delta = tf.random.stateless_uniform([batch, 1, 1, 1], brightness_seed,
                                      -MAX_BRIGHTNESS_DELTA, MAX_BRIGHTNESS_DELTA)
  images = images + delta
  factor = tf.random.stateless_uniform([batch, 1, 1, 1], contrast_seed, *CONTRAST_RANGE)
  mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
  return (images - mean) * factor + mean


def distort_batch(images, seed, size=CROP_SIZE):
  """The tutorial's training distortions on a batch of uint8 [B, 32, 32, 3] images.

  Returns:
    float32 [B, size, size, 3], standardized per image.
  """
  crop_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  images = tf.cast(random_crop_and_flip(images, crop_seed, size), tf.float32)
  return standardize(random_brightness_and_contrast(images, color_seed))


def eval_batch(images, size):
  """Central crop and standardization of uint8 [B, 32, 32, 3] images -> float32."""
  return standardize(tf.cast(cifar10_records.central_crop(images, size), tf.float32))


# --------------------------------------------------------------------------- pipelines


def train_inputs(split, batch_size, seed, augment=True, image_size=CROP_SIZE):
  """Endless shuffled training batches.

  Args:
    split: the training Split.
    batch_size: images per batch; the last partial batch of an epoch is dropped so every
      batch has the same shape.
    seed: int; fixes the shuffle order and the distortions.
    augment: the tutorial's distortions if True; else the central crop (the full 32x32 image
      when image_size is 32), standardized.
    image_size: 24 or 32.

  Returns:
    A tf.data.Dataset of (float32 [batch, size, size, 3], int32 [batch]).
  """
  data = tf.data.Dataset.from_tensor_slices((split.images, split.labels))
  data = data.shuffle(len(split), seed=seed, reshuffle_each_iteration=True).repeat()
  data = data.batch(batch_size, drop_remainder=True)
  if augment:
    seeds = tf.data.Dataset.random(seed=seed).batch(2).map(lambda s: tf.cast(s, tf.int32))
    data = tf.data.Dataset.zip((data, seeds))
    data = data.map(lambda batch, s: (distort_batch(batch[0], s, image_size), batch[1]),
                    num_parallel_calls=tf.data.AUTOTUNE)
  else:
    data = data.map(lambda images, labels: (eval_batch(images, image_size), labels),
                    num_parallel_calls=tf.data.AUTOTUNE)
  return data.prefetch(tf.data.AUTOTUNE)


def eval_images(split, image_size=CROP_SIZE, chunk=1000):
  """Every image of the split, centrally cropped and standardized once: float32 [N, s, s, 3].

  Evaluation scores the same images at every checkpoint, so it prepares them once and keeps
  them in memory (10,000 test images at 24x24 are 69 MB) instead of re-running a pipeline.
  """
  return tf.concat([eval_batch(split.images[start:start + chunk], image_size)
                    for start in range(0, len(split), chunk)], axis=0)
