"""Tests that pin the wiring between the Config, the recipes, the loop and the input: each one fails
when one connection is cut (a setting not passed on, a list entry dropped), which the unit tests of
the parts cannot see."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

import tiny_mura
import tiny_runs
from simclr_mura import data
from simclr_mura import main
from simclr_mura import objective
from simclr_mura import recipes
from simclr_mura import train
from simclr_mura.config import Config

SIZE = 32


def _tiny(**changes) -> Config:
    values = dict(resnet_depth=18, image_size=SIZE, train_batch_size=4, warmup_epochs=0,
                  proj_out_dim=16, train_steps=10, learning_rate=0.1)
    values.update(changes)
    return Config(**values)


def test_lars_leaves_batch_norm_bias_and_supervised_head_undecayed_and_unscaled():
    # The production path: the optimizer the recipe builds from the Config, on the recipe's model.
    recipe = recipes.for_config(_tiny(optimizer='lars', weight_decay=0.1))
    model = recipe.build_model(2)
    schedule = recipe.learning_rate(100)
    optimizer = recipe.optimizer(schedule)
    rate = float(schedule(0))
    variables = model.trainable_variables
    before = [v.numpy() for v in variables]
    optimizer.apply_gradients([(tf.ones_like(v), v) for v in variables])
    # An excluded variable moves by exactly rate x gradient: no weight decay, no trust ratio.
    excluded = [i for i, v in enumerate(variables)
                if any(name in v.name for name in ('batch_normalization', 'bias', 'head_supervised'))]
    assert any('batch_normalization' in variables[i].name for i in excluded)
    for i in excluded:
        np.testing.assert_allclose(before[i] - variables[i].numpy(), rate, rtol=1e-3,
                                   err_msg=variables[i].name)
    # The others get both, so they move differently.
    kernel = next(i for i, v in enumerate(variables) if i not in excluded and 'kernel' in v.name)
    assert not np.allclose(before[kernel] - variables[kernel].numpy(), rate, rtol=1e-3)


@pytest.mark.parametrize('temperature, hidden_norm', [(0.5, False), (0.2, True)])
def test_training_step_contrastive_loss_uses_the_configured_temperature_and_norm(temperature,
                                                                                 hidden_norm):
    config = _tiny(temperature=temperature, hidden_norm=hidden_norm,
                   lineareval_while_pretraining=False)
    recipe = recipes.for_config(config)
    model = recipe.build_model(2)
    strategy = tf.distribute.get_strategy()
    compute = train._make_compute_step(recipe, model, recipe.optimizer(0.1), strategy,
                                       jit_compile=False)
    images = tf.random.stateless_uniform([4, SIZE, SIZE, 6], seed=[7, 8])
    targets = {'label': tf.one_hot([0, 1, 0, 1], 2), 'weight': tf.ones([4])}
    blur_seed = tf.constant([1, 2], tf.int64)
    _, stats = compute(images, targets, blur_seed)
    # Training-mode batch norm uses the batch statistics: the same call gives the same projections.
    projections = tf.cast(model(images, training=True, blur_seed=blur_seed)[0], tf.float32)
    expected, _, _ = objective.add_contrastive_loss(projections, hidden_norm=hidden_norm,
                                                    temperature=temperature, strategy=strategy)
    default, _, _ = objective.add_contrastive_loss(projections, hidden_norm=True, temperature=0.1,
                                                   strategy=strategy)
    assert float(stats['train/contrast_loss']) == pytest.approx(float(expected), rel=1e-5)
    assert float(stats['train/contrast_loss']) != pytest.approx(float(default), rel=1e-3)
    assert float(stats['train/total_loss']) == pytest.approx(
        float(expected + stats['train/weight_decay']), rel=1e-5)


class _WeightRecordingSimCLR(recipes.SimCLR):
    """SimCLR fine-tuning that also logs the mean per-example weight its loss receives."""

    def metric_names(self):
        return super().metric_names() + ['train/mean_weight']

    def compute_loss(self, model, images, targets, *, strategy, blur_seed=None):
        loss, stats = super().compute_loss(model, images, targets, strategy=strategy,
                                           blur_seed=blur_seed)
        stats['train/mean_weight'] = tf.reduce_mean(targets['weight'])
        return loss, stats


def _scalars(model_dir, tag):
    values = []
    for path in sorted(glob.glob(os.path.join(model_dir, 'events.out.tfevents.*'))):
        for event in tf.compat.v1.train.summary_iterator(path):
            values += [float(tf.make_ndarray(v.tensor)) for v in event.summary.value if v.tag == tag]
    return values


def test_mura_class_weights_reach_the_training_loss(tmp_path_factory, tmp_path, monkeypatch):
    monkeypatch.setitem(recipes.RECIPES, 'finetune', _WeightRecordingSimCLR)
    data_dir = tiny_mura.build(os.path.join(str(tmp_path_factory.getbasetemp()), 'tiny_mura'))
    config = tiny_runs.base_config(data_dir, str(tmp_path), mode='train', train_mode='finetune',
                                   allow_random_init=True, class_weighting='mura', train_steps=2,
                                   global_bn=False, optimizer='momentum')
    main.run(config, strategy=tiny_runs.strategy(1))
    builder = data.make_builder(config.dataset, data_dir)
    elbow = builder.info.features['body_part'].names.index('elbow')
    weights = data.mura_class_weight_table(builder, config.train_split).weights[elbow]
    assert not np.allclose(weights, 1)
    (mean_weight,) = _scalars(str(tmp_path), 'train/mean_weight')
    # Every example is an elbow: its weight is w_normal or w_abnormal, never the 1 of no weighting.
    assert min(weights) - 1e-6 <= mean_weight <= max(weights) + 1e-6
