"""Tiny in-memory data, configs and runs shared by the training and evaluation tests."""

import dataclasses
import io
import os
import shutil
import tarfile
import time

import numpy as np
import tensorflow as tf

import cifar10_model
import cifar10_records
import cifar10_run
import cifar10_config


# The side of the tiny runs' images: the tutorial's own 24x24 central crop (its local3 gets
# 2,304 inputs instead of 4,096 at 32x32, so a step costs about half as much). Tests that
# hand a tiny_config run images they make themselves make them at this side.
TINY_SIZE = 24


def tiny_split(num=32, seed=0):
  """Noise images whose class k shows as a bright band on rows 3k..3k+2: easy to learn (the
  32x32 images as stored; at TINY_SIZE the central crop shows rows 4..27, class 0 as no band
  at all)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, size=num).astype(np.int32)
  images = rng.integers(0, 100, size=(num, 32, 32, 3), dtype=np.uint8)
  for image, label in zip(images, labels):
    image[3 * label:3 * label + 3] += 150
  return cifar10_records.Split(images=images, labels=labels)


def tiny_config(train_dir, **overrides):
  """A fast TrainConfig: batch 16, TINY_SIZE without augmentation (the central crop),
  direct convolutions, frequent logs and saves, no histograms or images (the summaries test
  asks for them).

  Direct, not the CPU's spectral conv2 of the tutorial at 24x24: tracing its FFT products
  costs a tiny run more than its few steps save, and the tiny runs trained at 32x32 (where
  no layer is spectral) computed direct convolutions too; the spectral tests ask for it.
  """
  values = dict(train_dir=str(train_dir), max_steps=20, batch_size=16, log_frequency=5,
                checkpoint_steps=10, histogram_steps=1000, augment=False,
                image_size=TINY_SIZE, conv='direct')
  values.update(overrides)
  return cifar10_config.TrainConfig(**values)


def write_batches_dir(root, split):
  """Every train and test .bin file of cifar-10-batches-bin under root, each holding `split`.

  Returns:
    The batches folder (for cifar10_records.load_split).
  """
  batches_dir = os.path.join(root, cifar10_records.BATCHES_DIR)
  os.makedirs(batches_dir, exist_ok=True)
  planes = split.images.transpose(0, 3, 1, 2).reshape(len(split), -1)  # HWC -> CHW records
  records = np.concatenate([split.labels.astype(np.uint8)[:, None], planes], axis=1)
  for name in cifar10_records.TRAIN_FILES + cifar10_records.TEST_FILES:
    records.astype(np.uint8).tofile(os.path.join(batches_dir, name))
  return batches_dir


FULL_FILE_BYTES = cifar10_records.RECORDS_PER_FILE * cifar10_records.RECORD_BYTES  # 30,730,000


def make_batches_dir(data_dir, resize=None, bad_label=None):
  """Full-size .bin files of zeros (sparse, so instant); optionally one bad size or label.

  Args:
    data_dir: folder to create cifar-10-batches-bin in.
    resize: (file name, byte delta) to make one file truncated or oversized.
    bad_label: (file name, record index) whose label byte becomes 10.
  """
  batches_dir = os.path.join(data_dir, cifar10_records.BATCHES_DIR)
  os.makedirs(batches_dir)
  for name in cifar10_records.TRAIN_FILES + cifar10_records.TEST_FILES:
    with open(os.path.join(batches_dir, name), 'wb') as f:
      f.truncate(FULL_FILE_BYTES + (resize[1] if resize and resize[0] == name else 0))
  if bad_label:
    with open(os.path.join(batches_dir, bad_label[0]), 'r+b') as f:
      f.seek(bad_label[1] * cifar10_records.RECORD_BYTES)
      f.write(bytes([10]))
  return batches_dir


def add_member(tar, name, data=b'', **fields):
  """Adds a member holding `data` to an open tarfile; `fields` set TarInfo attributes."""
  info = tarfile.TarInfo(name)
  info.size = len(data)
  for key, value in fields.items():
    setattr(info, key, value)
  tar.addfile(info, io.BytesIO(data) if data else None)


def wait_for(predicate, process, timeout, what):
  """Polls predicate() until true; fails if the subprocess ends or the timeout passes first."""
  deadline = time.time() + timeout
  while not predicate():
    assert process.poll() is None, f'process ended early waiting for {what}'
    assert time.time() < deadline, f'timed out waiting for {what}'
    time.sleep(0.2)


def copy_run(source_dir, target_dir):
  """A copy of a trained run folder whose config.json names the copy: tests that change a run
  work on their own copy of one run trained once per module."""
  shutil.copytree(source_dir, target_dir)
  config = cifar10_run.read_config(str(target_dir))
  cifar10_run.write_config(dataclasses.replace(config, train_dir=str(target_dir)))
  return target_dir


# Not weights: the seconds of training and the number of saves differ between a resumed run
# and an uninterrupted one.
BOOKKEEPING = ('train_seconds', 'save_counter')


def newest_checkpoint_values(train_dir):
  """{name: value} of every entry of train_dir's newest checkpoint but the run's bookkeeping
  (the weights, EMA shadows, step, masks, and the object graph as bytes)."""
  reader = tf.train.load_checkpoint(cifar10_run.newest_checkpoint(str(train_dir)))
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if not any(part in name for part in BOOKKEEPING)}


def as_if_trained(model):
  """`model` with every BatchNorm's gamma, beta and moving statistics drawn away from 1 and
  0 (tf.random's current seed), as after training: folding them then changes the weights."""
  for layer, _ in model.walk(model.input_shape):
    if isinstance(layer, cifar10_model.BatchNorm):
      n = layer.gamma.shape[0]
      layer.gamma.assign(tf.random.uniform([n], 0.5, 1.5))
      layer.beta.assign(tf.random.normal([n], stddev=0.1))
      layer.moving_mean.assign(tf.random.normal([n], stddev=0.1))
      layer.moving_variance.assign(tf.random.uniform([n], 0.5, 2.0))
  return model
