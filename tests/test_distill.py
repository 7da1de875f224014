"""Tests of knowledge distillation (cifar10_distill.py): the loss by hand, the teachers, and the
trainer's objective with them."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

import cifar10_config
import cifar10_distill
import cifar10_input
import cifar10_run
import cifar10_trainer
from fixtures import TINY_SIZE, tiny_config, tiny_split


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def test_the_soft_term_is_t_squared_kl_computed_by_hand():
  teacher = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  student = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
  t = 2.0
  p, q = _softmax(teacher / t), _softmax(student / t)
  by_hand = t * t * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
  got = cifar10_distill.soft_cross_entropy(tf.constant(p, tf.float32),
                                           tf.constant(student, tf.float32), t)
  np.testing.assert_allclose(float(got), by_hand, rtol=1e-5)
  # Its smallest value, 0, where the student's softened predictions are the teacher's.
  same = cifar10_distill.soft_cross_entropy(tf.constant(p, tf.float32),
                                            tf.constant(teacher, tf.float32), t)
  assert abs(float(same)) < 1e-6


def test_alpha_weighs_the_soft_term_against_the_labels():
  p = tf.constant([[0.7, 0.2, 0.1]])
  logits = tf.constant([[0.0, 1.0, 0.0]])
  soft = float(cifar10_distill.soft_cross_entropy(p, logits, 3.0))
  for alpha in (0.0, 0.25, 1.0):
    got = float(cifar10_distill.distillation_loss(tf.constant(1.5), p, logits, alpha, 3.0))
    assert got == pytest.approx(alpha * soft + (1 - alpha) * 1.5, rel=1e-6)


def test_teacher_dirs_are_comma_separated():
  assert cifar10_distill.teacher_dirs(' a, b ,,c') == ['a', 'b', 'c']
  assert cifar10_distill.teacher_dirs('') == []


@pytest.fixture(scope='module', name='teachers')
def fixture_teachers(tmp_path_factory):
  """Two run folders of the tiny config, each its initial weights of another seed as its
  step-0 checkpoint (a teacher's weights need not be good for these tests)."""
  root = tmp_path_factory.mktemp('teachers')
  dirs = []
  for seed in (0, 1):
    config = tiny_config(root / f'teacher{seed}', seed=seed)
    tf.random.set_seed(seed)
    cifar10_run.write_config(config)
    cifar10_run.RunState(config).make_checkpoint().write(os.path.join(config.train_dir,
                                                                      'ckpt-0'))
    dirs.append(config.train_dir)
  return dirs


def _batch(size=8):
  split = tiny_split(size)
  return tf.constant(cifar10_input.eval_batch(split.images, TINY_SIZE)), tf.constant(split.labels)


def test_several_teachers_average_their_softened_predictions(teachers, tmp_path):
  images, _ = _batch()
  expected = []
  for train_dir in teachers:
    opened = cifar10_run.load_inference_model(train_dir, ema=True)
    expected.append(_softmax(opened.model(images).numpy() / 4.0))
  config = tiny_config(tmp_path / 'student', teacher_dir=','.join(teachers),
                       distill_temperature=4.0)
  got = cifar10_distill.Teacher(config).probabilities(images).numpy()
  np.testing.assert_allclose(got, np.mean(expected, axis=0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_a_teacher_that_is_no_run_or_sees_other_images_is_refused(teachers, tmp_path):
  with pytest.raises(cifar10_config.ConfigError, match='--teacher_dir'):
    cifar10_distill.Teacher(tiny_config(tmp_path / 's', teacher_dir=str(tmp_path / 'none')))
  with pytest.raises(cifar10_config.ConfigError, match='the run being trained'):
    cifar10_distill.Teacher(tiny_config(teachers[0], teacher_dir=teachers[0]))
  with pytest.raises(cifar10_config.ConfigError, match='same images'):
    cifar10_distill.Teacher(tiny_config(tmp_path / 's', teacher_dir=teachers[0],
                                        image_size=32))  # The teachers see TINY_SIZE, 24.


def test_the_trainer_distills_and_keeps_the_teacher_out_of_its_state(teachers, tmp_path):
  alpha, t = 0.75, 2.0
  plain_config = tiny_config(tmp_path / 'plain', weight_decay='l2', l2_decay=0.0)
  config = tiny_config(tmp_path / 'student', weight_decay='l2', l2_decay=0.0,
                       teacher_dir=teachers[0], distill_alpha=alpha, distill_temperature=t)
  tf.random.set_seed(0)
  plain = cifar10_trainer.Trainer(plain_config)
  tf.random.set_seed(0)
  student = cifar10_trainer.Trainer(config)
  images, labels = _batch(16)
  hard, _, logits = plain.objective(images, labels)
  got, _, _ = student.objective(images, labels)
  teacher = cifar10_run.load_inference_model(teachers[0], ema=True).model
  p = _softmax(teacher(images).numpy() / t)
  q = _softmax(logits.numpy() / t)
  soft = t * t * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
  assert float(got) == pytest.approx(alpha * soft + (1 - alpha) * float(hard), rel=1e-4)
  # Only the student's variables train and are saved.
  assert len(student.variables) == len(plain.variables)
  keys = []
  for trainer in (student, plain):
    short = dataclasses.replace(trainer.config, max_steps=2, checkpoint_steps=2)
    cifar10_trainer.train(short, tiny_split(), make_trainer=lambda _, t=trainer: t)
    keys.append(set(tf.train.load_checkpoint(cifar10_run.newest_checkpoint(
        short.train_dir)).get_variable_to_shape_map()))
  assert keys[0] == keys[1]
