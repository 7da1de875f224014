"""Optimizers, learning-rate schedules and dynamic loss scaling, written by hand.

An optimizer is a small tf.Module that owns its slots (Sonnet 2's way): it is built from the
variables it updates, saves its slots in the run's checkpoint under the names it gives, and
applies one update. Adding one is a class and a line of OPTIMIZERS; its description there
becomes the flag's help. A Schedule maps the global step to the learning rate.
"""

import math

import tensorflow as tf


def describe(registry):
  """'name (what it is), ...' of a registry of (description, ...) entries, for flag help."""
  return ', '.join(f'{name} ({entry[0]})' for name, entry in registry.items())


# --------------------------------------------------------------------------- optimizers


class Optimizer(tf.Module):
  """The update of a list of variables from their gradients.

  Subclasses create their slots in __init__ and implement apply(). With
  `decoupled_decay` True the trainer leaves the weight decay out of the gradient and the
  optimizer decays each variable itself by its coefficient (AdamW's way).

  Args:
    variables: the trainable variables, in the order of the gradients.
    decay: each variable's weight-decay coefficient (0 for biases and BatchNorm).
    config: the run's TrainConfig (the optimizer reads its own hyperparameters there).
  """
  decoupled_decay = False

  def __init__(self, variables, decay, config):
    super().__init__(name=type(self).__name__.lower())
    self.targets, self.decay, self.config = list(variables), list(decay), config

  def checkpoint_state(self):
    """{name: list of slot variables} saved in the run's checkpoint (none for plain SGD)."""
    return {}

  def apply(self, gradients, rate, step, assign, finite=None):
    """Updates the variables once.

    Args:
      gradients: one per variable.
      rate: the learning rate (float32 scalar; 0 on a skipped step).
      step: the global step before this update (int64 scalar).
      assign: assign(variable, update, *args) runs update(variable, *args) on every copy of
        the variable alike (cifar10_trainer: direct, or through the strategy).
      finite: with loss scaling, whether the gradients are finite (bool scalar): when not,
        the gradients are zero, the rate is 0 and no slot may change.
    """
    raise NotImplementedError

  def _slots(self, suffix):
    return [tf.Variable(tf.zeros(v.shape), trainable=False,
                        name=v.name.split(':')[0] + '/' + suffix) for v in self.targets]


class SGD(Optimizer):
  """w -= rate * g."""

  def apply(self, gradients, rate, step, assign, finite=None):
    del step, finite
    for variable, gradient in zip(self.targets, gradients):
      assign(variable, lambda v, g: v.assign_sub(rate * g), gradient)


class Momentum(Optimizer):
  """Heavy ball: v = momentum * v + g, w -= rate * v; the velocities are in the checkpoint."""
  nesterov = False

  def __init__(self, variables, decay, config):
    super().__init__(variables, decay, config)
    self.velocities = self._slots('velocity')

  def checkpoint_state(self):
    return {'velocities': list(self.velocities)}

  def apply(self, gradients, rate, step, assign, finite=None):
    del step
    mu = self.config.momentum
    for variable, gradient, velocity in zip(self.targets, gradients, self.velocities):
      assign(velocity, lambda v, g: v.assign(
          mu * v + g if finite is None else tf.where(finite, mu * v + g, v)), gradient)
      if self.nesterov:
        assign(variable, lambda w, g, v: w.assign_sub(rate * (g + mu * v)), gradient, velocity)
      else:
        assign(variable, lambda w, v: w.assign_sub(rate * v), velocity)


class Nesterov(Momentum):
  """The same velocity, w -= rate * (g + momentum * v) (Sutskever et al. 2013, as PyTorch)."""
  nesterov = True


ADAM_BETA2 = 0.999  # decay of AdamW's second moment (Kingma & Ba's default)
ADAM_EPSILON = 1e-8  # added to the root of the second moment


class AdamW(Optimizer):
  """Adam with decoupled weight decay (Loshchilov & Hutter 2019).

  m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, then
  w -= rate * (m_hat / (sqrt(v_hat) + eps) + lambda * w), with m_hat = m / (1 - b1^t),
  v_hat = v / (1 - b2^t), t the number of this optimizer's updates so far, this one included
  (its own count, not the global step: moments that start at zero in a fine-tuning, or a step
  that loss scaling skipped, count from there), b1 = --momentum, b2 = ADAM_BETA2,
  eps = ADAM_EPSILON and lambda each matrix's weight-decay coefficient (--weight_decay's;
  biases and BatchNorm none), which is then left out of the gradient. Both moments and the
  count are in the checkpoint.
  """
  decoupled_decay = True

  def __init__(self, variables, decay, config):
    super().__init__(variables, decay, config)
    self.first_moments = self._slots('adam_m')
    self.second_moments = self._slots('adam_v')
    self.updates = tf.Variable(0.0, trainable=False, name='adam_updates')

  def checkpoint_state(self):
    return {'adam_m': list(self.first_moments), 'adam_v': list(self.second_moments),
            'adam_updates': self.updates}

  def apply(self, gradients, rate, step, assign, finite=None):
    del step
    b1, b2 = self.config.momentum, ADAM_BETA2
    t = self.updates + 1.0
    first_correction, second_correction = 1.0 - b1 ** t, 1.0 - b2 ** t

    def moment(beta, value):  # A skipped step (loss scaling) leaves the moment as it was.
      return lambda slot, g: slot.assign(
          beta * slot + (1.0 - beta) * value(g) if finite is None
          else tf.where(finite, beta * slot + (1.0 - beta) * value(g), slot))
    for variable, gradient, m, v, decay in zip(self.targets, gradients, self.first_moments,
                                               self.second_moments, self.decay):
      assign(m, moment(b1, lambda g: g), gradient)
      assign(v, moment(b2, tf.square), gradient)
      assign(variable, lambda w, m, v, decay=decay: w.assign_sub(rate * (
          (m / first_correction) / (tf.sqrt(v / second_correction) + ADAM_EPSILON)
          + decay * w)), m, v)
    assign(self.updates, lambda n: n.assign_add(1.0 if finite is None
                                                else tf.cast(finite, tf.float32)))


# name -> (description for the flag's help, class)
OPTIMIZERS = {
    'sgd': ('plain', SGD),
    'momentum': ('heavy ball, --momentum', Momentum),
    'nesterov': ('Nesterov momentum', Nesterov),
    'adamw': ('Adam, beta1 = --momentum, with decoupled weight decay: each matrix decays by '
              'its --weight_decay coefficient, outside the gradient', AdamW),
}


def make_optimizer(name, variables, decay, config):
  """The optimizer `name` of OPTIMIZERS over `variables` (see Optimizer)."""
  return OPTIMIZERS[name][1](variables, decay, config)


# --------------------------------------------------------------------------- schedules


ONECYCLE_PEAK = 0.25  # where 'onecycle' peaks, as a share of its steps
SCHEDULES_TO_LAST_STEP = ('warmup_linear', 'warmup_cosine', 'onecycle')  # reach 0 there

# name -> (description for the flag's help,)
SCHEDULES = {
    'constant': ('the study',),
    'staircase': ('x --lr_decay_factor every --lr_decay_epochs',),
    'warmup_linear': ('up over --warmup_steps, then down to 0 at the last step along a line',),
    'warmup_cosine': ('the same along a half cosine',),
    'onecycle': ('linearly up to the peak at a quarter of the steps, then down to 0',),
}


class Schedule:
  """The learning rate of the update at each global step.

  Args:
    name: one of SCHEDULES.
    rate: the rate (the peak of the schedules that rise).
    last_step: the step where the decaying schedules reach 0 (a run's max_steps).
    warmup_steps, decay_steps, decay_factor: of warmup_* and staircase.
    first_step: the step where the schedule starts (0 for a run; a fine-tuning's first step).
  """

  def __init__(self, name, rate, last_step, warmup_steps=0, decay_steps=1, decay_factor=0.1,
               first_step=0):
    if name not in SCHEDULES:
      raise ValueError(f'lr_schedule must be one of {", ".join(SCHEDULES)}, got {name!r}')
    self.name, self.rate, self.last_step, self.first_step = name, rate, last_step, first_step
    self.warmup_steps, self.decay_steps, self.decay_factor = (warmup_steps, decay_steps,
                                                              decay_factor)

  def __repr__(self):
    return (f'{self.name} at {self.rate:g} from step {self.first_step:,} to {self.last_step:,}'
            + (f', warm-up {self.warmup_steps:,} steps' if self.name.startswith('warmup') else ''))

  def __call__(self, step):
    """The rate at `step` (an int64 tensor, 0 for the first update of a run).

    constant: the rate. staircase: x decay_factor every decay_steps (the tutorial's).
    warmup_linear / warmup_cosine: linearly up to the rate over warmup_steps (from rate /
    warmup_steps at the first step), then down to 0 at last_step along a line or a half
    cosine. onecycle: linearly up to the rate at ONECYCLE_PEAK of the steps, then down to 0.
    """
    rate = self.rate
    if self.name == 'constant':
      return tf.constant(rate, tf.float32)
    if self.first_step:
      step = step - self.first_step
    if self.name == 'staircase':
      drops = tf.cast(step // self.decay_steps, tf.float32)
      return rate * tf.pow(self.decay_factor, drops)
    step, total = tf.cast(step, tf.float32), float(self.last_step - self.first_step)
    if self.name == 'onecycle':
      peak = max(ONECYCLE_PEAK * total, 1.0)
      return rate * tf.maximum(tf.minimum((step + 1) / peak, (total - step) / (total - peak)),
                               0)
    warmup = float(self.warmup_steps)
    rise = tf.minimum((step + 1) / max(warmup, 1.0), 1.0)
    progress = tf.clip_by_value((step - warmup) / max(total - warmup, 1.0), 0.0, 1.0)
    if self.name == 'warmup_linear':
      return rate * rise * (1.0 - progress)
    return rate * rise * 0.5 * (1.0 + tf.cos(math.pi * progress))


# --------------------------------------------------------------------------- loss scaling


INITIAL_LOSS_SCALE = 2.0 ** 15  # the first scale of --precision=mixed_float16
LOSS_SCALE_GROWTH_STEPS = 2000  # finite steps in a row after which the scale doubles


class LossScale(tf.Module):
  """Dynamic loss scaling: the loss is multiplied by `scale` before the gradients, which are
  divided by it after (small float16 gradients would flush to zero otherwise). An overflow
  halves the scale (down to 1) and skips the update; LOSS_SCALE_GROWTH_STEPS finite steps in
  a row double it. Both variables are in the checkpoint."""

  def __init__(self):
    super().__init__(name='loss_scale')
    self.scale = tf.Variable(INITIAL_LOSS_SCALE, trainable=False, name='loss_scale')
    self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name='good_steps')

  def checkpoint_state(self):
    return {'loss_scale': self.scale, 'good_steps': self.good_steps}

  def adjust(self, gradients, assign):
    """Whether the gradients are finite (bool scalar); updates the scale (see the class)."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
    good = tf.where(finite, self.good_steps + 1, 0)
    grow = good >= LOSS_SCALE_GROWTH_STEPS
    scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale),
                     tf.maximum(self.scale / 2.0, 1.0))
    good = tf.where(grow, tf.zeros_like(good), good)
    assign(self.scale, lambda v, x: v.assign(x), scale)
    assign(self.good_steps, lambda v, x: v.assign(x), good)
    return finite
