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
# The scalar tags of an evaluation, per weights ('ema', 'raw'): cifar10_eval.py and the
# sweep write them, so TensorBoard and the HParams metrics find one name.
PRECISION_TAG, CROSS_ENTROPY_TAG = 'precision @ 1/{}', 'cross_entropy/{}'


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
    self._counts = tf.function(self._counts)

  def _counts(self, images, labels):
    """The confusion matrix and the summed cross-entropy over all images, in one call: no
    Python between the batches."""
    classes = cifar10_records.NUM_CLASSES

    def counts(start, size):
      scores = self.scores(images[start:start + size])
      truth = tf.cast(labels[start:start + size], tf.int32)
      predicted = tf.argmax(scores, axis=1, output_type=tf.int32)
      return (tf.math.confusion_matrix(truth, predicted, num_classes=classes, dtype=tf.int64),
              tf.reduce_sum(self.cross_entropy(scores, truth)))

    full_batches, remainder = divmod(self.num_examples, self.batch_size)
    matrix, loss = tf.zeros([classes, classes], tf.int64), tf.zeros([], tf.float64)
    for batch in tf.range(full_batches):
      batch_matrix, batch_loss = counts(batch * self.batch_size, self.batch_size)
      matrix, loss = matrix + batch_matrix, loss + tf.cast(batch_loss, tf.float64)
    if remainder:
      batch_matrix, batch_loss = counts(full_batches * self.batch_size, remainder)
      matrix, loss = matrix + batch_matrix, loss + tf.cast(batch_loss, tf.float64)
    return matrix, loss

  def cross_entropy(self, scores, labels):
    """[B] cross-entropy of the true classes under scores(): of the logits' softmax, or with
    tta='flip' of the mean softmax itself (its log floored at 1e-12)."""
    scores = tf.cast(scores, tf.float32)
    if self.tta == 'none':
      return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=scores)
    return -tf.math.log(tf.maximum(tf.gather(scores, labels, batch_dims=1), 1e-12))

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
    return self.confusion_and_loss()[0]

  def confusion_and_loss(self):
    """confusion() and the mean cross-entropy over every image (no weight decay: the loss
    of the predictions alone, as TensorBoard shows it beside the training's)."""
    matrix, loss = self._counts(self.images, self.labels)
    return matrix.numpy(), float(loss.numpy()) / self.num_examples

  def precision(self):
    """Top-1 accuracy of the model's current weights over every image, and the count."""
    return precision_of(self.confusion()), self.num_examples


def precision_of(confusion):
  """Precision @ 1 of a confusion matrix: the share of its images on the diagonal."""
  return int(np.trace(confusion)) / int(np.sum(confusion))


def per_class(confusion):
  """Per class, precision @ 1 among the images of that class (the row's diagonal share)."""
  return [int(row[index]) / max(int(np.sum(row)), 1) for index, row in enumerate(confusion)]
