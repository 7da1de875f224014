"""Knowledge distillation: a student trained towards a teacher's softened predictions.

The trainer's objective (cifar10_trainer.Trainer.objective) uses it when the run's config
names --teacher_dir. With p = softmax(teacher logits / T) (averaged over the teachers when
several are named), q = softmax(student logits / T), a = --distill_alpha and
T = --distill_temperature, the loss of a batch is

    a * T^2 * KL(p || q) + (1 - a) * CE(labels, student logits)

(Hinton et al. 2015; the T^2 keeps the soft term's gradients at the hard term's scale as T
changes). The teachers see the same distorted batch as the student, in inference mode with
their EMA shadows and their BatchNorms folded, and nothing of them is trained or saved in
the student's checkpoints. A teacher may cost anything: it never ships. docs/design.md.
"""

import os

import tensorflow as tf

import cifar10_config
import cifar10_run


def teacher_dirs(teacher_dir):
  """The run folders of a --teacher_dir value: comma-separated, empty entries dropped."""
  return [d.strip() for d in teacher_dir.split(',') if d.strip()]


class Teacher:
  """The teacher runs of a config, opened for inference (never tracked by the student).

  Args:
    config: the student's TrainConfig (its teacher_dir and image_size).
    conv: how the teachers compute convolutions (cifar10_spectral).

  Raises:
    cifar10_config.ConfigError: a teacher folder holds no run, is the student's own folder,
      or was trained at another image size.
  """

  def __init__(self, config, conv='auto'):
    self.models, self.dirs = [], teacher_dirs(config.teacher_dir)
    for train_dir in self.dirs:
      if os.path.realpath(train_dir) == os.path.realpath(config.train_dir):
        raise cifar10_config.ConfigError(
            f'--teacher_dir={train_dir} is the run being trained: name another run.')
      try:
        opened = cifar10_run.load_inference_model(train_dir, ema=True, conv=conv,
                                                  fold_batchnorm=True, flag='--teacher_dir')
      except cifar10_run.UnreadableCheckpoint as e:
        raise cifar10_config.ConfigError(f'--teacher_dir={train_dir}: {e}') from e
      if opened.config.image_size != config.image_size:
        raise cifar10_config.ConfigError(
            f'--teacher_dir={train_dir} was trained at {opened.config.image_size}x'
            f'{opened.config.image_size}, the student at {config.image_size}x'
            f'{config.image_size}: a teacher must see the same images.')
      self.models.append(opened.model)
    self.alpha, self.temperature = config.distill_alpha, config.distill_temperature

  def probabilities(self, images):
    """float32 [B, K]: the teachers' mean softmax(logits / T) of `images`, a constant."""
    images = tf.cast(images, tf.float32)
    mean = tf.add_n([tf.nn.softmax(tf.cast(model(images, training=False), tf.float32)
                                   / self.temperature) for model in self.models])
    return tf.stop_gradient(mean / len(self.models))

  def loss(self, hard_cross_entropy, images, student_logits):
    """The distillation loss of a batch (distillation_loss) at the config's alpha and T."""
    return distillation_loss(hard_cross_entropy, self.probabilities(images), student_logits,
                             self.alpha, self.temperature)


def soft_cross_entropy(teacher_probabilities, student_logits, temperature):
  """T^2 * KL(p || softmax(student / T)), the batch's mean (float32 scalar)."""
  log_q = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / temperature)
  p = teacher_probabilities
  log_p = tf.math.log(tf.maximum(p, 1e-30))
  kl = tf.reduce_sum(p * (log_p - log_q), axis=-1)
  return temperature ** 2 * tf.reduce_mean(kl)


def distillation_loss(hard_cross_entropy, teacher_probabilities, student_logits, alpha,
                      temperature):
  """a * T^2 * KL + (1 - a) * the hard cross-entropy (the module's formula)."""
  soft = soft_cross_entropy(teacher_probabilities, student_logits, temperature)
  return alpha * soft + (1.0 - alpha) * hard_cross_entropy
