"""Tests for simclr_mura.recipes: the registry, each recipe's pieces on a tiny config, and a recipe
registered here (not in the package) running through the real training loop."""
import math
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tiny_mura
import tiny_runs
from simclr_mura import config as config_lib
from simclr_mura import data
from simclr_mura import densenet
from simclr_mura import lars_optimizer
from simclr_mura import objective
from simclr_mura import recipes
from simclr_mura import schedule
from simclr_mura import train
from simclr_mura.config import Config, ConfigError
from simclr_mura.recipes import base

SIZE = 32


def _tiny(**changes) -> Config:
    values = dict(resnet_depth=18, image_size=SIZE, train_batch_size=4, warmup_epochs=0,
                  proj_out_dim=16, train_steps=10)
    values.update(changes)
    return Config(**values)


# ----------------------------------------------------------------------------- registry

def test_every_train_mode_has_a_recipe_and_nothing_else_does():
    assert set(recipes.RECIPES) == set(config_lib.TRAIN_MODES)
    assert isinstance(recipes.for_config(Config(train_mode='pretrain')), recipes.SimCLR)
    assert isinstance(recipes.for_config(Config(train_mode='finetune')), recipes.SimCLR)
    assert isinstance(recipes.for_config(Config(train_mode='baseline', optimizer='adam')),
                      recipes.Baseline)


def test_an_unregistered_train_mode_is_one_clear_error():
    with pytest.raises(ConfigError) as raised:
        recipes.for_config(Config(train_mode='nope'))
    assert str(raised.value).count('\n') == 0
    assert '--train_mode=nope' in str(raised.value) and 'baseline' in str(raised.value)


# ----------------------------------------------------------------------------- SimCLR

def test_simclr_pretraining_pieces():
    recipe = recipes.for_config(_tiny(train_mode='pretrain'))
    assert recipe.uses_blur_seed
    assert recipe.train_input() == base.TrainInput(is_pretrain=True, color_jitter_strength=1.0)
    assert recipe.eval_preprocess_fn() is None
    assert 'resnet_depth=18' in recipe.architecture()
    assert isinstance(recipe.learning_rate(100), schedule.WarmUpAndCosineDecay)
    assert isinstance(recipe.optimizer(0.1), lars_optimizer.LARSOptimizer)
    assert recipe.checkpoint_extras() == {}
    # Chance levels of uninformative embeddings for a global batch of N = 4 (objective.py).
    assert recipe.reference_scalars(4) == {'train/contrast_loss_chance': pytest.approx(2 * math.log(7)),
                                           'train/contrast_acc_chance': pytest.approx(1 / 4)}

    model = recipe.build_model(2)
    assert model.supervised_head is not None  # lineareval_while_pretraining
    images = tf.random.stateless_uniform([4, SIZE, SIZE, 6], seed=[1, 2])
    targets = {'label': tf.one_hot([0, 1, 1, 0], 2), 'weight': tf.ones([4])}
    loss, stats = recipe.compute_loss(model, images, targets, strategy=tf.distribute.get_strategy())
    assert sorted(stats) == sorted(recipe.metric_names())
    parts = stats['train/contrast_loss'] + stats['train/supervised_loss'] + stats['train/weight_decay']
    assert float(loss) == pytest.approx(float(parts), rel=1e-6)
    assert float(stats['train/total_loss']) == float(loss)


def test_crop_min_area_reaches_the_simclr_training_input():
    # The original's 0.08 by default, in the Config and in the recipe's input settings alike.
    assert Config().crop_min_area == base.TrainInput(is_pretrain=True).crop_min_area == 0.08
    for mode in ('pretrain', 'finetune'):
        recipe = recipes.for_config(_tiny(train_mode=mode, crop_min_area=0.3))
        assert recipe.train_input().crop_min_area == 0.3
        assert recipe.train_input().as_kwargs()['crop_min_area'] == 0.3


def test_simclr_finetuning_pieces():
    recipe = recipes.for_config(_tiny(train_mode='finetune', optimizer='momentum'))
    assert not recipe.uses_blur_seed
    assert recipe.train_input() == base.TrainInput(is_pretrain=False, color_jitter_strength=1.0)
    assert recipe.reference_scalars(4) == {}
    assert isinstance(recipe.optimizer(0.1), tf_keras.optimizers.SGD)
    assert recipe.metric_names() == ['train/weight_decay', 'train/total_loss',
                                     'train/supervised_loss', 'train/supervised_acc']
    model = recipe.build_model(2)
    images = tf.random.stateless_uniform([4, SIZE, SIZE, 3], seed=[3, 4])
    targets = {'label': tf.one_hot([0, 1, 1, 0], 2), 'weight': tf.ones([4])}
    loss, stats = recipe.compute_loss(model, images, targets, strategy=tf.distribute.get_strategy())
    assert sorted(stats) == sorted(recipe.metric_names())
    assert float(loss) == pytest.approx(
        float(stats['train/supervised_loss'] + stats['train/weight_decay']), rel=1e-6)


def test_mixed_float16_wraps_the_optimizer_in_a_loss_scale():
    recipe = recipes.for_config(_tiny(mixed_precision='mixed_float16'))
    assert isinstance(recipe.optimizer(0.1), tf_keras.mixed_precision.LossScaleOptimizer)


# ----------------------------------------------------------------------------- baseline

def test_baseline_pieces_without_building_the_densenet():
    config = _tiny(train_mode='baseline', optimizer='adam', baseline_plateau_decay=True,
                   learning_rate=1e-3)
    recipe = recipes.for_config(config)
    assert recipe.architecture() == densenet.ARCHITECTURE
    assert not recipe.uses_blur_seed
    train_input = recipe.train_input()
    assert not train_input.is_pretrain
    # The one place the baseline's preprocessing is chosen: training and evaluation agree on it.
    image = tf.cast(tf.random.stateless_uniform([50, 40, 1], seed=[5, 6], maxval=256, dtype=tf.int32),
                    tf.uint8)
    expected = densenet.preprocess_image(image, image_size=SIZE, is_training=False)
    np.testing.assert_array_equal(recipe.eval_preprocess_fn()(image, is_training=False), expected)
    np.testing.assert_array_equal(train_input.preprocess_fn(image, is_training=False), expected)
    rate = recipe.learning_rate(100)
    plateau = recipe.checkpoint_extras()['plateau']
    assert isinstance(plateau, densenet.PlateauState)
    plateau.update(1.0)
    plateau.update(2.0)  # No improvement: the rate drops tenfold.
    assert float(rate(0)) == pytest.approx(1e-4)
    assert isinstance(recipe.optimizer(rate), tf_keras.optimizers.Adam)
    assert 'does not improve over an epoch (7 steps)' in recipe.describe_start(7)
    assert recipes.for_config(config.replace(baseline_plateau_decay=False)).checkpoint_extras() == {}


# ----------------------------------------------------------------------------- a new recipe

class _ToyModel(tf_keras.Model):
    """Global average of the pixels -> Dense(2); no projection head."""

    def __init__(self):
        super().__init__()
        self.supervised_head = tf_keras.layers.Dense(2, name='head_supervised')

    def call(self, inputs, training=None):
        return None, self.supervised_head(tf.reduce_mean(inputs, axis=[1, 2]))


def _toy_preprocess(image, is_training, seed=None):
    del is_training, seed  # No augmentation.
    image = tf.image.resize(tf.image.convert_image_dtype(image, tf.float32), [SIZE, SIZE])
    return tf.tile(image, [1, 1, 3])


class _ToyRecipe(base.Recipe):
    """Plain SGD on a linear classifier: a recipe the package does not know about."""

    def __init__(self, config):
        super().__init__(config)
        self.hook_steps = []

    def architecture(self):
        return 'toy linear classifier'

    def build_model(self, num_classes):
        model = _ToyModel()
        model(tf.zeros([1, SIZE, SIZE, 3]))
        return model

    def train_input(self):
        return base.TrainInput(is_pretrain=False, preprocess_fn=_toy_preprocess)

    def learning_rate(self, num_train_examples):
        return tf_keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=1, decay_rate=1.0)

    def optimizer(self, learning_rate):
        return tf_keras.optimizers.SGD(learning_rate)

    def metric_names(self):
        return ['train/total_loss', 'train/toy_acc']

    def compute_loss(self, model, images, targets, *, strategy, blur_seed=None):
        _, logits = model(images, training=True)
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets['label'], logits))
        return loss, {'train/total_loss': loss,
                      'train/toy_acc': objective.supervised_accuracy(targets['label'], logits)}

    def reference_scalars(self, global_batch):
        return {'train/toy_reference': float(global_batch)}

    def initialize(self, model):
        for variable in model.trainable_variables:
            variable.assign(tf.zeros_like(variable))

    def epoch_hook(self, model, builder, strategy, class_weights):
        def hook(step):
            self.hook_steps.append(step)
            return {'toy/epoch_end': float(step)}
        return hook


def test_a_recipe_registered_outside_the_package_runs_through_the_real_loop(
        tmp_path_factory, tmp_path, monkeypatch):
    monkeypatch.setitem(recipes.RECIPES, 'toy', _ToyRecipe)
    data_dir = tiny_mura.build(os.path.join(str(tmp_path_factory.getbasetemp()), 'tiny_mura'))
    config = tiny_runs.base_config(data_dir, str(tmp_path), train_mode='toy', image_size=SIZE,
                                   train_steps=6, checkpoint_steps=2)
    builder = data.make_builder(config.dataset, data_dir)
    num_train = data.num_examples(builder, config.train_split)
    recipe = recipes.for_config(config)
    strategy = tiny_runs.strategy(1)
    with strategy.scope():
        model = recipe.build_model(2)
    step = train.train(config, builder, strategy, model, num_train_examples=num_train, recipe=recipe)
    assert step == 6
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-6')
    # The recipe's initial weights (zeros) were trained away from.
    assert np.abs(model.supervised_head.kernel.numpy()).sum() > 0
    # Epochs of round(38 / 8) = 5 steps: the loop also ends at step 5 for the recipe's hook.
    assert recipe.hook_steps == [5]
    tags = set()
    for event_file in tf.io.gfile.glob(os.path.join(str(tmp_path), 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            tags.update(value.tag for value in event.summary.value)
    assert {'train/total_loss', 'train/toy_acc', 'train/toy_reference', 'toy/epoch_end',
            'learning_rate'} <= tags
