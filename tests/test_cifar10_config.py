"""Tests of the training configuration (cifar10_config.py): limits, recipes, derived flags."""

import dataclasses
import json
import os

import pytest
import tensorflow as tf

import cifar10_config
import cifar10_flags
import cifar10_run
import cifar10_train
from fixtures import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_of(*argv):
  """The TrainConfig that `cifar10_train.py argv` would train with."""
  return cifar10_config.config_from_values(*cifar10_flags.parse(cifar10_train.define_flags,
                                                                argv))


@pytest.mark.parametrize('overrides,message', [
    (dict(learning_rate=float('nan')), '--learning_rate=nan must be a finite number'),
    (dict(learning_rate=float('inf')), '--learning_rate=inf must be a finite number'),
    (dict(moving_average_decay=-0.5), '--moving_average_decay=-0.5 must be'),
    (dict(batch_size=100000), r'--batch_size=100000 must be a finite number in 1 \.\. 50,000'),
    (dict(lr_schedule='staircase', lr_decay_epochs=1e-9), 'under one step at batch 128'),
    # A hand-edited config.json: values no flag would have let through.
    (dict(optimizer='adam'), "optimizer 'adam' is not one of sgd, momentum, nesterov"),
    (dict(recipe='fastest'),
     "recipe 'fastest' is not one of study, tutorial, fast, fast32, fast32m"),
    (dict(lr_schedule='cyclic'), "lr_schedule 'cyclic' is not one of constant"),
    (dict(distortions='mixup'),
     "distortions 'mixup' is not one of tutorial, crop_flip, crop_flip_mean"),
    (dict(momentum=1.0), r'--momentum=1.0 must be a finite number in 0 \.\. 0.999'),
    (dict(label_smoothing=-0.1), r'--label_smoothing=-0.1 must be a finite number in 0 \.\. 0.999'),
    (dict(moving_average_decay=1.5), r'--moving_average_decay=1.5 must be a finite number in '
     r'0 \.\. 1'),
    (dict(cutout=40, image_size=32), '--cutout=40 exceeds the image side 32'),
    (dict(max_steps=0), '--max_steps=0 must be a finite number >= 1'),
    # Strings and floats in a hand-edited config.json.
    (dict(max_steps='100'), "max_steps '100' must be an integer"),
    (dict(max_steps=1.5), 'max_steps 1.5 must be an integer'),
    (dict(learning_rate='0.1'), "learning_rate '0.1' must be a number"),
    (dict(augment='false'), "augment 'false' must be a bool"),
    (dict(train_dir=5), 'train_dir 5 must be a str'),
    (dict(crop_slack=3), '--crop_slack=3 must be even'),
    (dict(widths='conv1=0'), "--widths=conv1=0: widths entry 'conv1=0' is not <layer>="),
    (dict(widths=12), 'widths 12 must be a str'),
])
def test_a_config_refuses_values_that_cannot_train(overrides, message):
  with pytest.raises(cifar10_config.ConfigError, match=message):
    cifar10_config.TrainConfig(**overrides)


def test_a_config_json_from_before_the_recipes_reads_as_the_study_recipe(tmp_path):
  config = tiny_config(tmp_path)
  new = {'recipe', 'optimizer', 'momentum', 'warmup_steps', 'label_smoothing', 'distortions',
         'cutout', 'l2_decay'}
  record = {key: value for key, value in dataclasses.asdict(config).items() if key not in new}
  (tmp_path / cifar10_run.CONFIG_FILE).write_text(json.dumps(record))
  assert cifar10_run.read_config(str(tmp_path)) == config  # The defaults are the study's.
  assert config.recipe == 'study' and config.optimizer == 'sgd'


def test_a_recipe_sets_its_values_and_an_explicit_flag_overrides_one(tmp_path):
  config = config_of(f'--train_dir={tmp_path}', '--recipe=fast32', '--learning_rate=0.05')
  recipe = cifar10_config.recipe_values('fast32')
  assert config.recipe == 'fast32' and config.learning_rate == 0.05
  for name, value in recipe.items():
    if name != 'learning_rate':
      assert getattr(config, name) == value, name
  assert config.image_size == 32  # The recipe's, not the default 24 of augmentation.
  line = cifar10_config.recipe_summary(config)
  assert 'recipe fast32: optimizer=nesterov' in line
  assert f'learning_rate=0.05 (recipe: {recipe["learning_rate"]})' in line
  cifar10_run.write_config(config)
  assert cifar10_run.read_config(str(tmp_path)) == config


def test_a_flag_given_at_its_default_value_still_wins_over_the_recipe(tmp_path):
  config = config_of(f'--train_dir={tmp_path}', '--recipe=fast', '--warmup_steps=0')
  assert config.warmup_steps == 0 and config.lr_schedule == 'warmup_linear'


def test_a_warm_up_longer_than_the_run_is_a_note_naming_the_flags(tmp_path):
  short = config_of(f'--train_dir={tmp_path}', '--recipe=fast', '--max_steps=30')
  assert short.warmup_steps == 500  # The recipe's, kept: the run still trains.
  assert cifar10_config.notes(short) == [
      "the warm-up of 500 steps is longer than the run's 30 (--max_steps): the learning rate "
      'never reaches its peak 0.03 (0.0018 at the last step); pass --warmup_steps under 30 to '
      'reach it']
  for fits in (('--max_steps=500',), ('--max_steps=30', '--warmup_steps=20'),
               ('--max_steps=30', '--lr_schedule=constant')):  # no warm-up then
    assert cifar10_config.notes(config_of(f'--train_dir={tmp_path}', '--recipe=fast',
                                          *fits)) == [], fits
  assert cifar10_config.notes(config_of(f'--train_dir={tmp_path}', '--max_steps=30')) == []


def test_the_fast_recipes_use_the_one_l2_coefficient_of_the_model():
  for name in ('fast', 'fast32', 'fast32m'):
    assert cifar10_config.recipe_values(name)['l2_decay'] == cifar10_config.TrainConfig.l2_decay


def test_the_study_recipe_is_the_defaults_and_tutorial_sets_the_tutorials_choices(tmp_path):
  study = config_of(f'--train_dir={tmp_path}')
  assert study == cifar10_config.TrainConfig(train_dir=str(tmp_path), conv=study.conv)
  tutorial = config_of(f'--train_dir={tmp_path}', '--recipe=tutorial')
  assert (tutorial.init, tutorial.weight_decay, tutorial.lr_schedule) == (
      'tutorial', 'tutorial', 'staircase')
  assert config_of('--noaugment').image_size == 32 and study.image_size == 24


def test_the_config_records_the_resolved_convolution(tmp_path):
  config = config_of(f'--train_dir={tmp_path}', '--conv=auto')
  gpus = tf.config.list_physical_devices('GPU')
  assert config.conv == ('direct' if gpus else 'spectral') and config.image_size == 24
  cifar10_run.write_config(config)
  assert cifar10_run.read_config(str(tmp_path)).conv == config.conv


def test_every_training_flag_is_a_config_field_with_its_help_and_limits():
  flag_values = cifar10_flags.flags.FlagValues()
  holders = cifar10_train.define_flags(flag_values)
  fields = set(cifar10_config.FIELDS)
  assert fields <= set(holders) and set(holders) - fields == {
      'data_dir', 'extract_dir', 'data_url', 'restart'}
  for name in fields:
    flag = flag_values[name]
    assert flag.help.endswith(cifar10_config.field_help(name)), name  # enums: choices first
    if name != 'image_size':  # None: chosen from --augment.
      assert flag.default == cifar10_config.FIELDS[name].default, name
  assert flag_values['max_steps'].help == 'Train up to this step. [steps]'
  assert 'fast32m (fast32, the crop padded' in flag_values['recipe'].help


@pytest.mark.parametrize('field', [f for f in cifar10_config.FIELDS.values()
                                   if f.metadata['choices'] and f.name != 'image_size'])
def test_a_field_with_choices_is_an_enum_flag_refusing_any_other(field):
  with pytest.raises(cifar10_flags.flags.IllegalFlagValueError, match=field.name):
    cifar10_flags.parse(cifar10_train.define_flags, [f'--{field.name}=no-such-choice'])


BOUNDED = [(name, bound) for name, field in cifar10_config.FIELDS.items()
           for bound in ('low', 'high') if field.metadata[bound] is not None]


@pytest.mark.parametrize('name,bound', BOUNDED)
def test_a_value_just_outside_a_limit_is_refused_by_the_flag_or_the_config(name, bound):
  field = cifar10_config.FIELDS[name]
  limit = field.metadata[bound]
  step = 1 if field.type is int else max(abs(limit) * 1e-3, 1e-12)
  value = limit - step if bound == 'low' else limit + step
  with pytest.raises((cifar10_flags.flags.Error, cifar10_config.ConfigError), match=name):
    config_of(f'--{name}={value}')
  config_of(f'--{name}={limit}', *(('--lr_schedule=constant',) if name == 'lr_decay_epochs'
                                   else ()))  # The limit itself passes.


@pytest.mark.parametrize('name,flag_high', [('momentum', 0.999), ('label_smoothing', 0.999)])
def test_the_fractions_below_one_are_refused_above_0_999_as_the_flag_parses(name, flag_high):
  with pytest.raises(cifar10_flags.flags.IllegalFlagValueError, match=name):
    cifar10_flags.parse(cifar10_train.define_flags, [f'--{name}={flag_high + 1e-4}'])


def test_docs_flags_holds_the_flag_table_derived_from_the_config():
  with open(os.path.join(ROOT, 'docs', 'flags.md'), encoding='utf-8') as f:
    assert cifar10_config.flag_table() in f.read(), (
        'docs/flags.md: paste cifar10_config.flag_table() in place of the old table')


def test_the_model_of_a_config_has_its_widths_and_a_layer_it_lacks_is_a_config_error(tmp_path):
  config = tiny_config(tmp_path, widths='conv2=32,local4=50')
  model = cifar10_run.default_model(config, 'direct')
  assert [tuple(layer.kernel.shape)[-1] for layer in model.weight_layers()] == [
      64, 32, 384, 50, 10]
  with pytest.raises(cifar10_config.ConfigError, match=r"--widths=conv9=3: .*no layer 'conv9'"):
    cifar10_run.default_model(tiny_config(tmp_path, widths='conv9=3'), 'direct')
