"""Tests for simclr_mura.checkpoints: --checkpoint forms, architecture mismatch messages."""
import os

import numpy as np
import pytest
import tensorflow as tf

import tiny_runs
from simclr_mura import checkpoints
from simclr_mura import model as model_lib
from simclr_mura.config import ConfigError

KERNEL = 'model/resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel/.ATTRIBUTES/VARIABLE_VALUE'
HEAD = 'model/supervised_head/linear_layer/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE'


@pytest.fixture(scope='module')
def pretrain(tmp_path_factory):
    model_dir, _ = tiny_runs.pretrain_dir(str(tmp_path_factory.getbasetemp()))
    return model_dir


def _model(train_mode='finetune', **kwargs):
    values = dict(resnet_depth=18, image_size=64, train_mode=train_mode, global_bn=False)
    values.update(kwargs)
    model = model_lib.Model(2, **values)
    model(tf.zeros([1, 64, 64, 3]), training=False)
    return model


def _stem_kernel(model):
    return model.resnet_model.initial_conv_relu_max_pool[0].weights[0].numpy()


@pytest.mark.parametrize('form', ['prefix', 'directory', 'saved_model'])
def test_initialise_from_each_checkpoint_form(pretrain, form):
    path = {'prefix': os.path.join(pretrain, 'ckpt-4'), 'directory': pretrain,
            'saved_model': os.path.join(pretrain, 'saved_model', '4')}[form]
    model = _model()
    result = checkpoints.initialize_from_checkpoint(model, path, False, 'r18')
    expected = tf.train.load_checkpoint(os.path.join(pretrain, 'ckpt-4'))
    np.testing.assert_array_equal(_stem_kernel(model), expected.get_tensor(KERNEL))
    # The pretraining run's linear-eval head has the same shape, so it is loaded (as the original).
    assert result.head_restored
    np.testing.assert_array_equal(model.supervised_head.linear_layer.dense.kernel.numpy(),
                                  expected.get_tensor(HEAD))
    # Batch-norm statistics too (not trainable, so a SavedModel stores them under model/...).
    bn = model.resnet_model.initial_conv_relu_max_pool[2].bn
    np.testing.assert_array_equal(bn.moving_variance.numpy(), expected.get_tensor(
        'model/resnet_model/initial_conv_relu_max_pool/2/bn/moving_variance/.ATTRIBUTES/VARIABLE_VALUE'))


def test_zero_init_logits_layer_zeroes_the_head(pretrain):
    model = _model()
    result = checkpoints.initialize_from_checkpoint(model, pretrain, True, 'r18')
    assert not result.head_restored
    assert not np.any(model.supervised_head.linear_layer.dense.kernel.numpy())
    assert not np.any(model.supervised_head.linear_layer.dense.bias.numpy())


def test_deeper_model_names_the_first_missing_variable(pretrain):
    with pytest.raises(checkpoints.CheckpointMismatchError) as info:
        checkpoints.initialize_from_checkpoint(_model(resnet_depth=34), pretrain, False,
                                               'resnet_depth=34')
    message = str(info.value)
    assert '(resnet_depth=34)' in message and 'is missing from the checkpoint' in message
    assert 'model/resnet_model/block_groups/0/layers/2/' in message
    assert '\n' not in message


def test_wider_model_names_the_first_shape_mismatch(pretrain):
    with pytest.raises(checkpoints.CheckpointMismatchError) as info:
        checkpoints.initialize_from_checkpoint(_model(width_multiplier=2), pretrain, False,
                                               'width_multiplier=2')
    message = str(info.value)
    assert 'has shape [' in message and 'in the checkpoint but [' in message
    assert 'model/_projection_head/' in message or 'model/resnet_model/' in message


def test_head_of_another_shape_is_skipped(pretrain):
    model = _model(ft_proj_selector=3)  # the head then reads the 128-d projection output
    result = checkpoints.initialize_from_checkpoint(model, pretrain, False, 'r18')
    assert not result.head_restored and 'has shape [512, 2]' in result.reason
    expected = tf.train.load_checkpoint(os.path.join(pretrain, 'ckpt-4'))
    np.testing.assert_array_equal(_stem_kernel(model), expected.get_tensor(KERNEL))


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match='--checkpoint: No checkpoint found in directory'):
        checkpoints.initialize_from_checkpoint(_model(), str(tmp_path), False, 'r18')
    with pytest.raises(ConfigError, match='is not a checkpoint'):
        checkpoints.initialize_from_checkpoint(_model(), str(tmp_path / 'ckpt-9'), False, 'r18')


def test_another_class_count_keeps_a_fresh_head(pretrain):
    # The original crashes here ("initial value's shape ... is not compatible").
    model = model_lib.Model(5, train_mode='finetune', resnet_depth=18, image_size=64, global_bn=False)
    model(tf.zeros([1, 64, 64, 3]), training=False)
    result = checkpoints.initialize_from_checkpoint(model, pretrain, False, 'r18')
    assert not result.head_restored and "the model's [" in result.reason
    _, logits = model(tf.zeros([2, 64, 64, 3]), training=False)
    assert logits.shape == (2, 5)
    assert model.supervised_head.linear_layer.dense.kernel.numpy().any()  # fresh N(0, 0.01)
    expected = tf.train.load_checkpoint(os.path.join(pretrain, 'ckpt-4'))
    np.testing.assert_array_equal(_stem_kernel(model), expected.get_tensor(KERNEL))


def test_zero_init_with_another_class_count_zeroes_the_head(pretrain):
    model = model_lib.Model(5, train_mode='finetune', resnet_depth=18, image_size=64, global_bn=False)
    model(tf.zeros([1, 64, 64, 3]), training=False)
    result = checkpoints.initialize_from_checkpoint(model, pretrain, True, 'r18')
    assert not result.head_restored
    assert not any(v.numpy().any() for v in model.supervised_head.variables)
    _, logits = model(tf.random.uniform([2, 64, 64, 3]), training=False)
    assert not np.asarray(logits).any()
