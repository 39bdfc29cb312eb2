"""Tests for simclr_mura.resnet: structure, initialisation, freezing, SK/SE, synchronized BN."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from simclr_mura import resnet


def _images(batch, image_size, seed=1):
    return tf.constant(np.random.default_rng(seed).uniform(
        0, 1, (batch, image_size, image_size, 3)).astype(np.float32))


def _build(image_size=32, batch=2, **kwargs):
    kwargs.setdefault('cifar_stem', image_size <= 32)
    net = resnet.ResNet(**kwargs)
    endpoints = net(_images(batch, image_size), training=False, return_endpoints=True)
    return net, endpoints


@pytest.fixture(scope='module')
def r50():
    """ResNet-50 with the standard stem (one 64 px image), shared by the structure tests."""
    return _build(image_size=64, batch=1, resnet_depth=50)[0]


@pytest.fixture(scope='module')
def r50_sk():
    return _build(image_size=64, batch=1, resnet_depth=50, sk_ratio=0.0625)[0]


def _num_params(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _batch_norms(layer):
    return [m for m in layer.submodules if isinstance(m, tf_keras.layers.BatchNormalization)]


def test_endpoints_standard_stem_r18():
    net, endpoints = _build(image_size=64, resnet_depth=18)
    shapes = {name: tuple(t.shape) for name, t in endpoints.items()}
    assert shapes == {
        'initial_conv': (2, 32, 32, 64), 'initial_max_pool': (2, 16, 16, 64),
        'block_group1': (2, 16, 16, 64), 'block_group2': (2, 8, 8, 128),
        'block_group3': (2, 4, 4, 256), 'block_group4': (2, 2, 2, 512),
        'final_avg_pool': (2, 512)}
    np.testing.assert_allclose(endpoints['final_avg_pool'],
                               tf.reduce_mean(endpoints['block_group4'], [1, 2]), atol=1e-6)
    assert net.initial_conv_relu_max_pool[0].conv2d.kernel.shape == (7, 7, 3, 64)


def test_cifar_stem_has_no_downsampling():
    net, endpoints = _build(image_size=32, resnet_depth=18, width_multiplier=2)
    assert net.initial_conv_relu_max_pool[0].conv2d.kernel.shape == (3, 3, 3, 128)
    assert endpoints['initial_conv'].shape == (2, 32, 32, 128)
    assert endpoints['initial_max_pool'].shape == (2, 32, 32, 128)
    assert endpoints['final_avg_pool'].shape == (2, 1024)


def test_initial_conv_is_before_batch_norm():
    net, endpoints = _build(image_size=32, resnet_depth=18)
    x = _images(2, 32)
    stem_conv = net.initial_conv_relu_max_pool[0]
    np.testing.assert_allclose(endpoints['initial_conv'], stem_conv(x), atol=1e-6)


def test_last_bn_of_every_block_starts_at_zero_so_blocks_start_as_identity_plus_shortcut(r50):
    net = r50
    for group in net.block_groups:
        for block in group.layers:
            bns = [layer.bn for layer in block.conv_relu_dropblock_layers
                   if isinstance(layer, resnet.BatchNormRelu)]
            assert np.all(bns[-1].gamma.numpy() == 0)
            assert all(np.all(bn.gamma.numpy() == 1) for bn in bns[:-1])
    # With a zero residual branch an identity block outputs relu(input).
    block = net.block_groups[1].layers[1]
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 4, 4, 512)).astype(np.float32))
    np.testing.assert_allclose(block(x, training=False), tf.nn.relu(x), atol=1e-6)


def test_conv_init_is_truncated_normal_fan_in_scale_one():
    net, _ = _build(resnet_depth=18)
    kernel = net.block_groups[3].layers[1].conv2d_bn_layers[0].conv2d.kernel.numpy()
    fan_in = 3 * 3 * 512
    assert kernel.std() == pytest.approx(np.sqrt(1.0 / fan_in), rel=0.02)  # He would be sqrt(2)x
    # Truncated at two (pre-correction) standard deviations.
    assert np.abs(kernel).max() <= 2 * np.sqrt(1.0 / fan_in) / 0.87962566 + 1e-7


def test_batch_norm_settings_come_from_arguments():
    net, _ = _build(resnet_depth=18, batch_norm_decay=0.8, batch_norm_epsilon=1e-3,
                    global_bn=False)
    bns = _batch_norms(net)
    assert len(bns) == 1 + 8 * 2 + 4  # stem, two per block, one per group shortcut
    assert {(bn.momentum, bn.epsilon, bn.synchronized, bn.fused) for bn in bns} == {
        (0.8, 1e-3, False, True)}
    with _two_replica_strategy().scope():
        synced, _ = _build(resnet_depth=18)
    assert {(bn.momentum, bn.epsilon, bn.synchronized, bn.fused) for bn in _batch_norms(synced)} == {
        (0.9, 1e-5, True, False)}


def test_global_bn_with_one_replica_is_the_fused_kernel():
    # One replica: the global batch is the local one, so the cheaper fused kernel stands in.
    with tf.distribute.MirroredStrategy(['/cpu:0']).scope():
        net, _ = _build(resnet_depth=18)
    assert {(bn.synchronized, bn.fused) for bn in _batch_norms(net)} == {(False, True)}


def test_fused_batch_norm_matches_synchronized_one_on_one_replica():
    """Same outputs, gradients and moving statistics as the synchronised BN it replaces."""
    strategy = tf.distribute.MirroredStrategy(['/cpu:0'])
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 5, 5, 8)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(4, 5, 5, 8)).astype(np.float32))
    with strategy.scope():
        fused = resnet.make_batch_norm(resnet.BatchNormConfig(global_bn=True))
        synced = tf_keras.layers.BatchNormalization(synchronized=True, momentum=0.9, epsilon=1e-5)
        for layer in (fused, synced):
            layer.build(x.shape)
            layer.gamma.assign(rng.uniform(0.5, 1.5, 8).astype(np.float32))
            layer.beta.assign(rng.normal(size=8).astype(np.float32))
        synced.set_weights(fused.get_weights())

    def step(layer):
        def replica_fn():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * upstream)
            return (y,) + tuple(tape.gradient(loss, [x, layer.gamma, layer.beta]))
        outputs = tf.function(lambda: strategy.run(replica_fn))()
        return [strategy.experimental_local_results(t)[0].numpy() for t in outputs]

    results = {name: step(layer) for name, layer in (('fused', fused), ('synced', synced))}
    assert fused.fused and not synced.fused
    for got, want in zip(results['fused'], results['synced']):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused.moving_mean.numpy(), synced.moving_mean.numpy(), rtol=1e-5)
    # Biased batch variance in the moving average (the fused kernel's Bessel correction removed).
    np.testing.assert_allclose(fused.moving_variance.numpy(), synced.moving_variance.numpy(),
                               rtol=1e-5)
    assert not np.allclose(fused.moving_variance.numpy(), 1.0)


def test_bottleneck_list_keeps_the_original_dropblock_slots(r50, r50_sk):
    kinds = [type(layer).__name__ for layer in r50.block_groups[0].layers[0]
             .conv_relu_dropblock_layers]
    assert kinds == ['Conv2dFixedPadding', 'BatchNormRelu', 'DisabledDropBlock'] * 3
    kinds = [type(layer).__name__ for layer in r50_sk.block_groups[1].layers[0]
             .conv_relu_dropblock_layers]
    assert kinds == ['Conv2dFixedPadding', 'BatchNormRelu', 'DisabledDropBlock', 'SKConv2D',
                     'DisabledDropBlock', 'Conv2dFixedPadding', 'BatchNormRelu',
                     'DisabledDropBlock']


def test_sk_uses_resnet_d_stem_and_shortcut(r50_sk):
    net = r50_sk
    stem = net.initial_conv_relu_max_pool
    assert [layer.conv2d.kernel.shape for layer in stem if
            isinstance(layer, resnet.Conv2dFixedPadding)] == [(3, 3, 3, 32), (3, 3, 32, 32),
                                                              (3, 3, 32, 64)]
    shortcut = net.block_groups[1].layers[0].projection_layers
    assert [type(layer).__name__ for layer in shortcut] == [
        'FixedPadding', 'AveragePooling2D', 'Conv2dFixedPadding', 'BatchNormRelu']
    sk = net.block_groups[0].layers[0].conv_relu_dropblock_layers[3]
    assert sk.conv2d_0.kernel.shape == (1, 1, 64, 32)  # max(int(64 * 0.0625), 32)
    assert net(tf.zeros((1, 64, 64, 3)), training=False).shape == (1, 2048)


def test_squeeze_excitation_widths():
    net, _ = _build(resnet_depth=18, se_ratio=0.25)
    se = net.block_groups[0].layers[0].se_layer
    assert se.se_reduce.kernel.shape == (1, 1, 64, 16) and se.se_expand.kernel.shape == (
        1, 1, 16, 64)
    bottleneck, _ = _build(resnet_depth=50, se_ratio=0.25)
    se = bottleneck.block_groups[0].layers[0].conv_relu_dropblock_layers[9]
    assert se.se_reduce.kernel.shape == (1, 1, 256, 16) and se.se_expand.kernel.shape == (
        1, 1, 16, 256)


def test_parameter_counts_match_the_original(r50, r50_sk):
    assert _num_params(r50.trainable_variables) == 23_508_032  # README: "24M"
    assert _num_params(r50_sk.trainable_variables) == pytest.approx(35.2e6, rel=2e-3)


@pytest.mark.parametrize('frozen', [0, 2, 4])
def test_fine_tune_after_block_freezes_stem_and_first_groups(frozen):
    net, _ = _build(resnet_depth=18, fine_tune_after_block=frozen)
    expected = {id(v) for group in net.block_groups[frozen:] for v in group.trainable_variables}
    assert {id(v) for v in net.trainable_variables} == expected
    x = _images(2, 32, seed=2)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss = tf.reduce_sum(net(x, training=True) ** 2)
    assert tape.gradient(loss, x) is None  # stop_gradient cuts the path to the input
    grads = tape.gradient(loss, net.trainable_variables)
    assert all(g is not None for g in grads)


def test_no_freezing_trains_everything():
    net, _ = _build(resnet_depth=18)
    x = _images(2, 32, seed=2)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(net(x, training=True))
    assert tape.gradient(loss, x) is not None
    assert len(net.trainable_variables) == len(net.variables) - 2 * len(_batch_norms(net))


def test_frozen_batch_norm_runs_in_inference_mode():
    # Fix of the original: its frozen containers' inner BN layers kept using batch statistics
    # and updating moving averages during linear evaluation. Frozen means frozen here.
    net, _ = _build(resnet_depth=18, fine_tune_after_block=4)
    stem_bn = net.initial_conv_relu_max_pool[2].bn
    before = stem_bn.moving_mean.numpy().copy()
    images = _images(2, 32, seed=4)
    out_train = net(images, training=True)
    np.testing.assert_array_equal(before, stem_bn.moving_mean.numpy())
    np.testing.assert_allclose(out_train.numpy(), net(images, training=False).numpy(), atol=1e-6)
    # A partially frozen net still trains the BN of its unfrozen groups.
    net2, _ = _build(resnet_depth=18, fine_tune_after_block=2)
    last_bn = net2.block_groups[3].layers[0].conv2d_bn_layers[1].bn
    before = last_bn.moving_mean.numpy().copy()
    net2(images, training=True)
    assert not np.allclose(before, last_bn.moving_mean.numpy())


def test_invalid_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match='resnet_depth=42'):
        resnet.ResNet(resnet_depth=42)
    with pytest.raises(ValueError, match='width_multiplier'):
        resnet.ResNet(resnet_depth=18, width_multiplier=0)
    with pytest.raises(ValueError, match='fine_tune_after_block'):
        resnet.ResNet(resnet_depth=18, fine_tune_after_block=5)


def _two_replica_strategy():
    devices = tf.config.list_logical_devices('CPU')
    assert len(devices) >= 2, 'tests/conftest.py should split the CPU into 2 logical devices'
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


@pytest.mark.parametrize('global_bn', [True, False])
def test_global_bn_uses_statistics_of_the_whole_global_batch(global_bn):
    strategy = _two_replica_strategy()
    rng = np.random.default_rng(0)
    # Replica 1's data is shifted, so global and per-replica variances differ clearly.
    local = [rng.normal(0, 1, (8, 3)).astype(np.float32),
             rng.normal(4, 2, (8, 3)).astype(np.float32)]
    with strategy.scope():
        layer = resnet.BatchNormRelu(resnet.BatchNormConfig(global_bn=global_bn), relu=False)
        layer.build((None, 3))
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(local[ctx.replica_id_in_sync_group]))
    outputs = tf.function(lambda x: strategy.run(lambda v: layer(v, training=True), (x,)))(values)
    out0 = strategy.experimental_local_results(outputs)[0].numpy()

    everything = np.concatenate(local)
    if global_bn:
        expected_var = 0.9 + 0.1 * everything.var(0)
        expected_out0 = (local[0] - everything.mean(0)) / np.sqrt(everything.var(0) + 1e-5)
    else:  # each replica normalises by itself; ON_READ reads average the replicas' copies
        expected_var = 0.9 + 0.1 * np.mean([x.var(0) for x in local], axis=0)
        expected_out0 = (local[0] - local[0].mean(0)) / np.sqrt(local[0].var(0) + 1e-5)
    np.testing.assert_allclose(layer.bn.moving_variance.numpy(), expected_var, rtol=1e-4)
    np.testing.assert_allclose(layer.bn.moving_mean.numpy(), 0.1 * everything.mean(0), rtol=1e-4)
    np.testing.assert_allclose(out0, expected_out0, atol=1e-4)


@pytest.mark.parametrize('shape,kernel_size', [((4, 2, 2, 16), 3), ((2, 5, 7, 8), 3), ((2, 6, 6, 4), 1),
                                               ((2, 9, 9, 3), 7)])
def test_same_conv_stride1_equals_tensorflows_conv_and_gradients(shape, kernel_size):
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.normal(size=shape), tf.float32)
    kernel = tf.constant(rng.normal(size=(kernel_size, kernel_size, shape[-1], 5)), tf.float32)
    upstream = tf.constant(rng.normal(size=shape[:3] + (5,)), tf.float32)

    def value_and_grads(conv):
        with tf.GradientTape() as tape:
            tape.watch([inputs, kernel])
            out = conv(inputs, kernel)
            loss = tf.reduce_sum(out * upstream)
        return [out, *tape.gradient(loss, [inputs, kernel])]

    ours = value_and_grads(resnet.same_conv_stride1)
    reference = value_and_grads(lambda x, k: tf.nn.conv2d(x, k, 1, 'SAME'))
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
