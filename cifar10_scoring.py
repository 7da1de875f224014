"""Scoring a model on a split: precision @ 1, the confusion matrix, per-class results, flip TTA.

`Evaluator` is a run's state plus the images to score it on; cifar10_eval.py (the watcher),
compress/quantize.py and cifar10_export.py's check use it. Precision is the trace of the
confusion matrix, so the two can never disagree.
"""

import numpy as np
import tensorflow as tf

import cifar10_input
import cifar10_records
import cifar10_run

EVAL_BATCH_SIZE = 200  # images per forward pass (fastest here); any size gives the same counts
TTA_MODES = ('none', 'flip')


class Evaluator(cifar10_run.RunState):
  """A run's state (restored from its checkpoints) and the images to score it on.

  With tta='flip' each image is classified by the mean of the softmax of it and of its
  mirror image (test-time augmentation: two forward passes per image).
  """

  def __init__(self, config, split, batch_size=EVAL_BATCH_SIZE, conv='auto', tta='none'):
    super().__init__(config, conv=conv)
    if tta not in TTA_MODES:
      raise ValueError(f'tta must be one of {TTA_MODES}, got {tta!r}')
    self.tta = tta
    self.images = cifar10_input.eval_images(split, config.image_size)
    self.labels = tf.constant(split.labels)
    self.num_examples = len(split)
    self.batch_size = batch_size
    self._confusion = tf.function(self._confusion)

  def _confusion(self, images, labels):
    """The confusion matrix over all images, in one call: no Python between the batches."""
    classes = cifar10_records.NUM_CLASSES

    def counts(start, size):
      predicted = tf.argmax(self.scores(images[start:start + size]), axis=1,
                            output_type=tf.int32)
      return tf.math.confusion_matrix(labels[start:start + size], predicted,
                                      num_classes=classes, dtype=tf.int64)

    full_batches, remainder = divmod(self.num_examples, self.batch_size)
    matrix = tf.zeros([classes, classes], tf.int64)
    for batch in tf.range(full_batches):
      matrix += counts(batch * self.batch_size, self.batch_size)
    if remainder:
      matrix += counts(full_batches * self.batch_size, remainder)
    return matrix

  def scores(self, images):
    """[B, 10] class scores of float32 [B, s, s, 3] images: the logits, or with tta='flip'
    the mean softmax of the images and of their mirror images."""
    logits = self.model(images, training=False)
    if self.tta == 'none':
      return logits
    mirrored = self.model(tf.reverse(images, axis=[2]), training=False)
    return (tf.nn.softmax(logits) + tf.nn.softmax(mirrored)) / 2

  def logits(self, batch=EVAL_BATCH_SIZE, progress=None):
    """float32 [N, 10] NumPy logits of the model's current weights on every image;
    `progress(images done)`, if given, hears after each batch."""
    parts = []
    for start in range(0, self.num_examples, batch):
      parts.append(self.model(self.images[start:start + batch]).numpy())
      if progress is not None:
        progress(len(parts[-1]))
    return np.concatenate(parts)

  def confusion(self):
    """The model's current weights on every image: an int64 [10, 10] NumPy matrix, row = the
    true class, column = the predicted one (its trace: the correct predictions)."""
    return self._confusion(self.images, self.labels).numpy()

  def precision(self):
    """Top-1 accuracy of the model's current weights over every image, and the count."""
    return precision_of(self.confusion()), self.num_examples


def precision_of(confusion):
  """Precision @ 1 of a confusion matrix: the share of its images on the diagonal."""
  return int(np.trace(confusion)) / int(np.sum(confusion))


def per_class(confusion):
  """Per class, precision @ 1 among the images of that class (the row's diagonal share)."""
  return [int(row[index]) / max(int(np.sum(row)), 1) for index, row in enumerate(confusion)]
