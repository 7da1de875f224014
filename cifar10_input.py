"""The tutorial's TensorFlow input pipelines over CIFAR-10 held in memory.

Training batches get the tutorial's distortions (random 24x24 crop, flip, brightness and
contrast, then per-image standardization); evaluation images the central crop and
standardization. Finding and decoding the records is cifar10_records.py's job (no
TensorFlow there).

Augmentation runs on whole batches with stateless random ops, so one batch costs a handful
of tensor ops instead of 128 per-image map calls. The batch of a step, its images and its
distortions, is a function of the seed and the step alone: a resumed run sees what an
uninterrupted one would have.
"""

import tensorflow as tf

import cifar10_records

STORED_SIZE = cifar10_records.IMAGE_SIZE  # 32: the side of the images as stored
# The tutorial's distortions (docs/design.md), on the 0-255 scale.
CROP_SIZE = 24
MAX_BRIGHTNESS_DELTA = 63.0
CONTRAST_RANGE = (0.2, 1.8)
# The distortions of training (--distortions): the tutorial's, or today's usual random crop
# and flip alone, whose window of image_size pixels moves over the image padded (with zeros)
# to image_size + CROP_SLACK: a 24x24 crop of the 32x32 image, or a 32x32 crop of it padded
# by 4 on every side; both have the tutorial's 9 x 9 positions. 'crop_flip_mean' standardizes
# the whole image first and pads that, so the padding is the image's mean and, at 32x32, the
# pixels inside keep the values evaluation gives them (crop_flip's black padding enters the
# crop's mean and deviation, shifting every pixel of a crop that shows some).
DISTORTIONS = ('tutorial', 'crop_flip', 'crop_flip_mean')
CROP_SLACK = 8


# --------------------------------------------------------------------------- distortions


def standardize(images):
  """Per-image standardization of float images [B, H, W, C] (tf.image's formula)."""
  return tf.image.per_image_standardization(images)


def _draw(seed, part, rows, tail=(), **kwargs):
  """Uniform draws for `rows` images: the rows part[0].. of one draw for a whole batch of
  part[1] images, so that a replica's share of a batch gets what it would in the batch whole.

  Args:
    seed: int32 [2] stateless seed.
    part: (first row, rows of the whole batch), or None: a draw for exactly `rows`.
    rows: images drawn for (a scalar, possibly a tensor).
    tail: the shape of one image's draw.
    **kwargs: minval, maxval, dtype of tf.random.stateless_uniform.
  """
  tail = tf.constant(tail, tf.int32, shape=[len(tail)])
  if part is None:
    return tf.random.stateless_uniform(tf.concat([[rows], tail], 0), seed, **kwargs)
  first, total = part
  whole = tf.random.stateless_uniform(tf.concat([[total], tail], 0), seed, **kwargs)
  return whole[first:first + rows]


def random_crop_and_flip(images, seed, size=CROP_SIZE, part=None):
  """Crops a random size x size window from each image and mirrors half of them.

  Args:
    images: [B, S, S, C] of any dtype, S >= size (S is static).
    seed: int32 [2] stateless seed.
    size: side of the crop.
    part: (first row, rows of the whole batch) when images are a replica's share (_draw).

  Returns:
    [B, size, size, C], same dtype.
  """
  batch, side, channels = tf.shape(images)[0], images.shape[1], images.shape[-1]
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  offsets = _draw(crop_seed, part, batch, [2], minval=0, maxval=side - size + 1,
                  dtype=tf.int32)
  flip = _draw(flip_seed, part, batch) < 0.5
  window = tf.range(size)
  rows = offsets[:, :1] + window  # [B, size]
  cols = offsets[:, 1:] + tf.where(flip[:, None], size - 1 - window, window)  # Mirrored: reversed.
  # One gather of whole pixels by their flat index: 3x faster than gathering rows, then
  # columns, then selecting between the crops and their mirror images (same output).
  pixels = tf.reshape(rows[:, :, None] * side + cols[:, None, :], [batch, size * size])
  flat = tf.reshape(images, [batch, side * side, channels])
  return tf.reshape(tf.gather(flat, pixels, batch_dims=1), [batch, size, size, channels])


def random_brightness_and_contrast(images, seed, part=None):
  """The tutorial's per-image brightness (+-63) then contrast (0.2..1.8) on float images."""
  batch = tf.shape(images)[0]
  brightness_seed, contrast_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  delta = _draw(brightness_seed, part, batch, [1, 1, 1], minval=-MAX_BRIGHTNESS_DELTA,
                maxval=MAX_BRIGHTNESS_DELTA)
  images = images + delta
  factor = _draw(contrast_seed, part, batch, [1, 1, 1], minval=CONTRAST_RANGE[0],
                 maxval=CONTRAST_RANGE[1])
  mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
  return (images - mean) * factor + mean


def cutout(images, seed, side, part=None):
  """Zeroes a side x side square at a random place of each image (clipped at the edges):
  rows and columns c - side // 2 .. c - side // 2 + side - 1 around a uniform centre c.

  On standardized images zero is the image's mean: the square carries no information.
  """
  batch, size = tf.shape(images)[0], images.shape[1]
  starts = _draw(seed, part, batch, [2], minval=0, maxval=size, dtype=tf.int32) - side // 2
  pixels = tf.range(size)[None, :]
  rows, cols = [(pixels >= starts[:, axis:axis + 1]) & (pixels < starts[:, axis:axis + 1] + side)
                for axis in (0, 1)]
  keep = ~(rows[:, :, None] & cols[:, None, :])  # [B, size, size]
  return images * tf.cast(keep, images.dtype)[..., None]


def distort_batch(images, seed, size=CROP_SIZE, part=None, distortions='tutorial',
                  cutout_side=0, crop_slack=CROP_SLACK):
  """Training distortions on a batch of uint8 [B, 32, 32, 3] images.

  Args:
    images: uint8 [B, 32, 32, 3].
    seed: int32 [2] stateless seed.
    size: side of the output.
    part: (first row, rows of the whole batch) when the images are a replica's share of a
      batch: each image is distorted as it would be in the whole batch.
    distortions: 'tutorial' (crop, flip, brightness, contrast), 'crop_flip' (a crop of the
      zero-padded image and a flip) or 'crop_flip_mean' (the same of the standardized image,
      padded with its mean); DISTORTIONS.
    cutout_side: side of the square `cutout` zeroes after standardization; 0: none.
    crop_slack: the crop_flip modes' window moves over the image brought to size +
      crop_slack pixels (zero-padded, or centrally cropped when that is under 32): it has
      crop_slack + 1 positions per axis. Even; the tutorial mode ignores it.

  Returns:
    float32 [B, size, size, 3], standardized per image.
  """
  if distortions == 'tutorial':  # The seeds of the study's runs, unchanged.
    crop_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    images = tf.cast(random_crop_and_flip(images, crop_seed, size, part), tf.float32)
    images = standardize(random_brightness_and_contrast(images, color_seed, part))
  else:
    crop_seed = tf.random.experimental.stateless_split(seed, 2)[0]
    pad = max(size + crop_slack - STORED_SIZE, 0) // 2
    if size + crop_slack < STORED_SIZE:
      images = cifar10_records.central_crop(images, size + crop_slack)
    if distortions == 'crop_flip_mean':
      images = standardize(tf.cast(images, tf.float32))
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    images = tf.cast(random_crop_and_flip(padded, crop_seed, size, part), tf.float32)
    if distortions == 'crop_flip':
      images = standardize(images)
  if not cutout_side:
    return images
  cutout_seed = tf.random.experimental.stateless_fold_in(seed, 3)
  return cutout(images, cutout_seed, cutout_side, part)


def eval_batch(images, size):
  """Central crop and standardization of uint8 [B, 32, 32, 3] images -> float32."""
  return standardize(tf.cast(cifar10_records.central_crop(images, size), tf.float32))


# --------------------------------------------------------------------------- pipelines


# Streams of the two kinds of randomness, so the order of one epoch never shares a seed with
# the distortions of one step.
ORDER_STREAM, DISTORTION_STREAM = 0, 1


def step_seed(seed, stream, index):
  """The int32 [2] stateless seed of `index` (an epoch or a step) in `stream`."""
  base = tf.stack([tf.cast(seed, tf.int64), tf.cast(stream, tf.int64)])
  return tf.cast(tf.random.experimental.stateless_fold_in(base, index), tf.int32)


def epoch_order(num_images, seed, epoch):
  """The permutation of range(num_images) that training visits in `epoch`: a function of
  (seed, epoch) only, so any epoch's order is known without replaying the ones before."""
  keys = tf.random.stateless_uniform([num_images], step_seed(seed, ORDER_STREAM, epoch))
  return tf.argsort(keys, stable=True)


def steps_per_epoch(num_images, batch_size):
  """Whole batches in one pass over the images (the last partial one is dropped)."""
  if batch_size > num_images:
    raise ValueError(f'batch_size={batch_size} exceeds the {num_images:,} training images')
  return num_images // batch_size


def train_inputs(split, batch_size, seed, augment=True, image_size=CROP_SIZE, first_step=0,
                 replicas=(0, 1, 1), distortions='tutorial', cutout_side=0,
                 crop_slack=CROP_SLACK):
  """Endless shuffled training batches, indexed by the step they feed.

  The batch of step k depends only on (seed, k): batch k mod steps_per_epoch of epoch
  k // steps_per_epoch's permutation (epoch_order), distorted by the seed of step k, so a run
  resumed at step k sees exactly the batches an uninterrupted run would have seen. Replica r
  of `replicas` gets rows r*b .. (r+1)*b - 1 of that batch (b = batch_size / replicas),
  distorted as in the whole batch: together they see exactly the one-device batch.

  Args:
    split: the training Split.
    batch_size: images per (global) batch; each epoch drops its last partial batch so every
      batch has the same shape.
    seed: int; fixes the order of every epoch and the distortions of every step.
    augment: distort if True (distort_batch's `distortions`, `cutout_side`, `crop_slack`);
      else the central crop (the whole image at 32), standardized.
    image_size: 24 or 32.
    first_step: the step whose batch comes first (the step a run resumes at).
    replicas: (first, count, total): the shares of replicas first .. first + count - 1 of
      `total`, in turn for each step (one tf.distribute input pipeline's); default the batch.

  Returns:
    A tf.data.Dataset of (float32 [b, size, size, 3], int32 [b]), b = batch_size / total.

  Raises:
    ValueError: batch_size exceeds the images of the split or does not split evenly.
  """
  per_epoch = steps_per_epoch(len(split), batch_size)
  first, count, total = replicas
  share, rest = divmod(batch_size, total)
  if rest or not 0 <= first < first + count <= total:
    raise ValueError(f'batch_size={batch_size} does not split into replicas {replicas}')
  images, labels = tf.constant(split.images), tf.constant(split.labels)

  def epoch_batches(epoch):
    order = epoch_order(len(split), seed, epoch)[:per_epoch * batch_size]
    return tf.data.Dataset.from_tensor_slices(tf.reshape(order, [per_epoch, batch_size]))

  def shares(step, indices):  # This pipeline's replicas' shares of one step's batch.
    rows = tf.reshape(indices[first * share:(first + count) * share], [count, share])
    return tf.data.Dataset.from_tensor_slices(
        (tf.fill([count], step), rows, tf.range(first, first + count) * share))

  def batch(step, indices, first_row=0):
    chosen = tf.gather(images, indices)
    if augment:
      chosen = distort_batch(chosen, step_seed(seed, DISTORTION_STREAM, step), image_size,
                             (first_row, batch_size), distortions, cutout_side, crop_slack)
    else:
      chosen = eval_batch(chosen, image_size)
    return chosen, tf.gather(labels, indices)

  first_epoch, offset = divmod(first_step, per_epoch)
  indices = tf.data.Dataset.counter(first_epoch).flat_map(epoch_batches).skip(offset)
  data = tf.data.Dataset.zip((tf.data.Dataset.counter(first_step), indices))
  if total > 1:
    data = data.flat_map(shares)
  return data.map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def eval_images(split, image_size=CROP_SIZE, chunk=1000):
  """Every image of the split, centrally cropped and standardized once: float32 [N, s, s, 3].

  Evaluation scores the same images at every checkpoint, so it prepares them once and keeps
  them in memory (10,000 test images at 24x24 are 69 MB) instead of re-running a pipeline.
  """
  return tf.concat([eval_batch(split.images[start:start + chunk], image_size)
                    for start in range(0, len(split), chunk)], axis=0)
