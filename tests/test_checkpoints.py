"""Tests for simclr_mura.checkpoints: --checkpoint forms, architecture mismatch messages."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

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


@pytest.mark.slow  # trains the shared tiny pretraining run
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


@pytest.mark.slow  # trains the shared tiny pretraining run
def test_zero_init_logits_layer_zeroes_the_head(pretrain):
    model = _model()
    result = checkpoints.initialize_from_checkpoint(model, pretrain, True, 'r18')
    assert not result.head_restored
    assert not np.any(model.supervised_head.linear_layer.dense.kernel.numpy())
    assert not np.any(model.supervised_head.linear_layer.dense.bias.numpy())


@pytest.mark.slow  # trains the shared tiny pretraining run
def test_deeper_model_names_the_first_missing_variable(pretrain):
    with pytest.raises(checkpoints.CheckpointMismatchError) as info:
        checkpoints.initialize_from_checkpoint(_model(resnet_depth=34), pretrain, False,
                                               'resnet_depth=34')
    message = str(info.value)
    assert '(resnet_depth=34)' in message and 'is missing from the checkpoint' in message
    assert 'model/resnet_model/block_groups/0/layers/2/' in message
    assert '\n' not in message


@pytest.mark.slow  # trains the shared tiny pretraining run
def test_wider_model_names_the_first_shape_mismatch(pretrain):
    with pytest.raises(checkpoints.CheckpointMismatchError) as info:
        checkpoints.initialize_from_checkpoint(_model(width_multiplier=2), pretrain, False,
                                               'width_multiplier=2')
    message = str(info.value)
    assert 'has shape [' in message and 'in the checkpoint but [' in message
    assert 'model/_projection_head/' in message or 'model/resnet_model/' in message


@pytest.mark.slow  # trains the shared tiny pretraining run
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


@pytest.mark.slow  # trains the shared tiny pretraining run
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


@pytest.mark.slow  # trains the shared tiny pretraining run
def test_zero_init_with_another_class_count_zeroes_the_head(pretrain):
    model = model_lib.Model(5, train_mode='finetune', resnet_depth=18, image_size=64, global_bn=False)
    model(tf.zeros([1, 64, 64, 3]), training=False)
    result = checkpoints.initialize_from_checkpoint(model, pretrain, True, 'r18')
    assert not result.head_restored
    assert not any(v.numpy().any() for v in model.supervised_head.variables)
    _, logits = model(tf.random.uniform([2, 64, 64, 3]), training=False)
    assert not np.asarray(logits).any()


# ------------------------------------------------- optimizer state written by the original's Keras

def _dense_model():
    model = tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(3,)), tf_keras.layers.Dense(1)])
    return model


def _grads(model, seed):
    x = tf.random.stateless_normal([8, 3], seed=[seed, 0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x) - 1.0))
    return tape.gradient(loss, model.trainable_variables)


def _original_checkpoint(model_dir, kind):
    """A run of the original's optimizer (`tf.keras.optimizers.SGD(lr, momentum, nesterov=True)` or
    `Adam(lr)` of Keras' OptimizerV2, today tf_keras.optimizers.legacy), saved in run.py's layout."""
    model = _dense_model()
    optimizer = (tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9, nesterov=True) if kind == 'momentum'
                 else tf_keras.optimizers.legacy.Adam(0.1))
    for seed in range(3):
        optimizer.apply_gradients(zip(_grads(model, seed), model.trainable_variables))
    checkpoint = tf.train.Checkpoint(model=model, global_step=optimizer.iterations, optimizer=optimizer)
    tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=1).save(checkpoint_number=3)
    return model, optimizer


@pytest.mark.parametrize('kind, slots', [('momentum', ['momentum']), ('adam', ['m', 'v'])])
def test_original_momentum_and_adam_state_is_restored_and_training_continues_alike(tmp_path, kind,
                                                                                   slots):
    original, original_optimizer = _original_checkpoint(str(tmp_path), kind)
    latest = tf.train.latest_checkpoint(str(tmp_path))
    assert checkpoints.legacy_slot_names(latest) == slots
    model = _dense_model()
    optimizer = model_lib.build_optimizer(kind, 0.1, momentum=0.9)
    checkpoint, manager = checkpoints.make_manager(model, optimizer, str(tmp_path), 1)
    assert checkpoints.resume(checkpoint, manager) == latest
    assert int(optimizer.iterations.numpy()) == 3
    # One more step on the same gradients: the port's optimizer continues the original's run.
    original_optimizer.apply_gradients(zip(_grads(original, 9), original.trainable_variables))
    optimizer.apply_gradients(zip(_grads(model, 9), model.trainable_variables))
    for a, b in zip(original.trainable_variables, model.trainable_variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7)


def test_original_adam_state_is_refused_by_a_momentum_run(tmp_path):
    _original_checkpoint(str(tmp_path), 'adam')
    optimizer = model_lib.build_optimizer('momentum', 0.1)
    checkpoint, manager = checkpoints.make_manager(_dense_model(), optimizer, str(tmp_path), 1)
    with pytest.raises(ConfigError) as info:
        checkpoints.resume(checkpoint, manager)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "slots ['m', 'v']" in message and 'SGD' in message


def test_port_checkpoints_have_no_legacy_slots_to_copy(tmp_path):
    model = _dense_model()
    optimizer = model_lib.build_optimizer('adam', 0.1)
    optimizer.apply_gradients(zip(_grads(model, 0), model.trainable_variables))
    checkpoint, manager = checkpoints.make_manager(model, optimizer, str(tmp_path), 1)
    manager.save(checkpoint_number=1)
    assert checkpoints.legacy_slot_names(manager.latest_checkpoint) == []
    assert not checkpoints.restore_with_legacy_slots(checkpoint, manager.latest_checkpoint)


@pytest.mark.slow  # trains the shared tiny pretraining run, then one more step
def test_pretraining_continues_from_a_simclr_saved_model_with_a_fresh_optimizer_and_step(
        pretrain, tmp_path_factory, tmp_path):
    """--checkpoint in pretrain mode (e.g. the official SimCLRv2 ImageNet SavedModels): encoder,
    projection head and (same shape) linear-eval head come from it; optimizer and step start anew."""
    from simclr_mura import main
    from simclr_mura import recipes
    import tiny_mura
    data_dir = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    source = os.path.join(pretrain, 'saved_model', '4')
    config = tiny_runs.base_config(data_dir, str(tmp_path / 'continued'), train_mode='pretrain',
                                   checkpoint=source, train_steps=1, mode='train', learning_rate=0.1)
    recipe = recipes.for_config(config)
    model = recipe.build_model(2)
    recipe.initialize(model)
    expected = _model('pretrain')
    tf.train.Checkpoint(model=expected).restore(os.path.join(pretrain, 'ckpt-4')).expect_partial()
    assert len(model.variables) == len(expected.variables)
    for got, want in zip(model.variables, expected.variables):  # the same layers, in order
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=got.name)
    result = main.run(config, strategy=tiny_runs.strategy(1))
    assert result.final_step == 1  # the source's step 4 is not carried over
    reader = tf.train.load_checkpoint(os.path.join(config.model_dir, 'ckpt-1'))
    assert int(reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE')) == 1
