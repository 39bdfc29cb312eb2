"""Tests for simclr_mura.model: heads, the two-view model, weight decay, restore helper."""
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from simclr_mura import model as model_lib
from simclr_mura.lars_optimizer import LARSOptimizer

SIZE = 32  # CIFAR stem: the cheapest ResNet-18


def _images(batch, channels=6, size=SIZE, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(
        0, 1, (batch, size, size, channels)).astype(np.float32))


def _model(num_classes=2, **kwargs):
    kwargs.setdefault('resnet_depth', 18)
    kwargs.setdefault('image_size', SIZE)
    model = model_lib.Model(num_classes, **kwargs)
    channels = 3 if kwargs.get('train_mode') == 'finetune' else 6
    model(_images(2, channels), training=False)
    return model


def _num_params(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def test_model_is_marked_built_and_views_are_stacked_on_the_batch():
    model = _model(lineareval_while_pretraining=False, proj_head_mode='none')
    assert model.built
    a, b, c = (_images(2, 3, seed=s) for s in (1, 2, 3))
    ab, _ = model(tf.concat([a, b], -1), training=False)
    ac, _ = model(tf.concat([a, c], -1), training=False)
    ba, _ = model(tf.concat([b, a], -1), training=False)
    assert ab.shape == (4, 512)
    np.testing.assert_allclose(ab[:2], ac[:2], atol=1e-6)  # rows 0..B-1: view 1
    np.testing.assert_allclose(ab[2:], ba[:2], atol=1e-6)  # rows B..2B-1: view 2
    assert not np.allclose(ab[2:], ac[2:])


def test_nonlinear_head_structure_and_hiddens():
    head = model_lib.ProjectionHead('nonlinear', num_proj_layers=3, proj_out_dim=16,
                                    ft_proj_selector=1)
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32))
    out, selected, endpoints = head(x, training=False, return_endpoints=True)
    layers = head.linear_layers
    assert [layer.dense.kernel.shape for layer in layers] == [(8, 8), (8, 8), (8, 16)]
    assert not any(layer.dense.use_bias for layer in layers)  # the BN beta is the bias
    assert [layer.bn_relu.bn.center for layer in layers] == [True, True, False]
    np.testing.assert_allclose(selected, tf.nn.relu(endpoints['proj_head_layer0_output']))
    np.testing.assert_allclose(out, endpoints['proj_head_layer2_output'])  # no ReLU at the end
    assert out.shape == (4, 16)


def test_dense_kernels_are_normal_with_stddev_0_01():
    head = model_lib.ProjectionHead('nonlinear', 2, 128)
    head(tf.zeros((2, 2048)), training=False)
    kernel = head.linear_layers[0].dense.kernel.numpy()
    assert kernel.std() == pytest.approx(0.01, rel=0.01)
    assert abs(kernel.mean()) < 1e-4
    assert np.abs(kernel).max() > 0.045  # not truncated at 2 sigma


def test_linear_head_works_and_returns_the_same_tuple():  # bug 2 of the original
    model = _model(proj_head_mode='linear', proj_out_dim=32, ft_proj_selector=-1)
    proj, logits = model(_images(2), training=True)
    assert proj.shape == (4, 32) and logits.shape == (4, 2)
    layer, = model.projection_head.linear_layers
    assert not layer.dense.use_bias and not layer.bn_relu.bn.center
    assert model.supervised_head.linear_layer.dense.kernel.shape == (32, 2)


def test_none_head_is_identity():  # bug 3 of the original
    model = _model(proj_head_mode='none')
    outputs = model.named_outputs(_images(2))
    np.testing.assert_array_equal(outputs['proj_head_output'], outputs['final_avg_pool'])
    proj, logits = model(_images(2), training=True)
    assert proj.shape == (4, 512) and logits.shape == (4, 2)
    assert not model.projection_head.trainable_variables


def test_ft_proj_selector_out_of_range_is_rejected():
    with pytest.raises(ValueError, match='ft_proj_selector=4'):
        model_lib.ProjectionHead('nonlinear', num_proj_layers=3, ft_proj_selector=4)
    with pytest.raises(ValueError, match='ft_proj_selector=1'):
        model_lib.ProjectionHead('none', ft_proj_selector=1)


def test_supervised_head_init_and_zero_init():
    head = model_lib.SupervisedHead(3)
    head(tf.zeros((2, 4096)), training=False)
    kernel, bias = head.linear_layer.dense.kernel, head.linear_layer.dense.bias
    assert kernel.numpy().std() == pytest.approx(0.01, rel=0.02)
    assert not bias.numpy().any()
    assert all('head_supervised' in v.name for v in head.variables)
    zero = model_lib.SupervisedHead(3, zero_init=True)
    zero(tf.zeros((2, 16)), training=False)
    assert not any(v.numpy().any() for v in zero.variables)
    head.zero_init()
    assert not any(v.numpy().any() for v in head.variables)


def test_output_modes():
    finetune = _model(train_mode='finetune', num_classes=5)
    proj, logits = finetune(_images(2, 3), training=True)
    assert proj is None and logits.shape == (2, 5)
    pretrain = _model(lineareval_while_pretraining=False)
    proj, logits = pretrain(_images(2), training=False)
    assert proj.shape == (4, 128) and logits is None
    assert pretrain.supervised_head is None


def test_layer_freezing_is_rejected_when_pretraining():
    model = _model(fine_tune_after_block=2)
    model(_images(2), training=False)  # inference is allowed
    with pytest.raises(ValueError, match='fine_tune_after_block'):
        model(_images(2), training=True)
    frozen = _model(train_mode='finetune', fine_tune_after_block=4)
    assert {id(v) for v in frozen.trainable_variables} == {
        id(v) for v in frozen.projection_head.trainable_variables
        + frozen.supervised_head.trainable_variables}


def test_linear_eval_does_not_train_the_encoder():
    model = _model()
    with tf.GradientTape(persistent=True) as tape:
        _, logits = model(_images(2), training=True)
        loss = tf.reduce_sum(logits ** 2)
    backbone = model.resnet_model.trainable_variables + model.projection_head.trainable_variables
    assert all(g is None for g in tape.gradient(loss, backbone))
    assert all(g is not None for g in tape.gradient(
        loss, model.supervised_head.trainable_variables))


def _proj_after_train_call(model, use_blur, seed):
    model.use_blur = use_blur
    tf.random.set_seed(seed)
    return model(_images(4, seed=7), training=True)[0].numpy()


def test_blur_only_in_pretraining_training():
    model = _model(use_blur=True)
    plain = _proj_after_train_call(model, False, 0)
    np.testing.assert_allclose(_proj_after_train_call(model, False, 0), plain, atol=1e-5)
    assert not np.allclose(_proj_after_train_call(model, True, 0), plain, atol=1e-3)
    np.testing.assert_allclose(model(_images(4, seed=7), training=False)[0],
                               model(_images(4, seed=7), training=False)[0])
    finetune = _model(train_mode='finetune', use_blur=True)
    finetune.use_blur = True
    tf.random.set_seed(1)
    blurred = finetune(_images(4, 3), training=True)[1]
    finetune.use_blur = False
    np.testing.assert_allclose(finetune(_images(4, 3), training=True)[1], blurred, atol=1e-6)


def test_bad_channel_count_is_rejected():
    model = model_lib.Model(2, resnet_depth=18, image_size=SIZE)
    for channels in (4, 5, 7):
        with pytest.raises(ValueError, match='multiple of 3.*1 or 2'):
            model(tf.zeros((2, SIZE, SIZE, channels)), training=False)


def _tiled(grey_views):
    """(B, H, W, k) grey views -> (B, H, W, 3k): each view tiled to RGB, as the pipeline did."""
    return tf.concat([tf.tile(v, [1, 1, 1, 3]) for v in tf.split(grey_views, grey_views.shape[-1], -1)],
                     -1)


@pytest.mark.parametrize('train_mode,views', (('pretrain', 2), ('pretrain', 1), ('finetune', 1)))
def test_grey_views_give_the_outputs_of_their_rgb_tiles_bit_for_bit(train_mode, views):
    # The model tiles grey views after the blur; the blur is depthwise, so this must equal
    # blurring the RGB tiles exactly, in training (blur on) and in eval.
    model = _model(train_mode=train_mode, use_blur=True)
    grey = _images(6, views, seed=11)
    rgb = _tiled(grey)
    train_step = tf.function(lambda x, seed: model(x, training=True, blur_seed=seed))
    blurred_any = False
    for seed in ([1, 2], [3, 4], [5, 6]):
        seed = tf.constant(seed, tf.int64)
        from_grey, from_rgb = train_step(grey, seed), train_step(rgb, seed)
        for a, b in zip(from_grey, from_rgb):
            if a is not None:
                np.testing.assert_array_equal(a.numpy(), b.numpy())
        if train_mode == 'pretrain':
            model.use_blur = False
            plain = model(grey, training=True, blur_seed=seed)[0]
            model.use_blur = True
            blurred_any |= not np.array_equal(plain.numpy(), from_grey[0].numpy())
    assert blurred_any or train_mode == 'finetune'
    eager_grey = model(grey, training=True, blur_seed=tf.constant([7, 8], tf.int64))
    eager_rgb = model(rgb, training=True, blur_seed=tf.constant([7, 8], tf.int64))
    for a, b in zip(eager_grey, eager_rgb):
        if a is not None:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    from_grey, from_rgb = model.named_outputs(grey), model.named_outputs(rgb)
    assert from_grey.keys() == from_rgb.keys()
    for name in from_grey:
        np.testing.assert_array_equal(from_grey[name].numpy(), from_rgb[name].numpy(), err_msg=name)
    assert from_grey['final_avg_pool'].shape[0] == 6 * views


def test_weight_decay_terms():
    model = _model(num_classes=3)
    head_kernel = model.supervised_head.linear_layer.dense.kernel.numpy()
    lars = model_lib.add_weight_decay(model, 'lars', 1e-4)
    np.testing.assert_allclose(lars, 1e-4 * np.sum(head_kernel.astype(np.float64) ** 2) / 2,
                               rtol=1e-5)
    bn_vars = {id(m.gamma) for m in model.submodules
               if isinstance(m, tf_keras.layers.BatchNormalization)}
    bn_vars |= {id(m.beta) for m in model.submodules
                if isinstance(m, tf_keras.layers.BatchNormalization) and m.center}
    others = [v.numpy().astype(np.float64) for v in model.trainable_variables
              if id(v) not in bn_vars]
    expected = 1e-4 * sum(np.sum(v ** 2) for v in others) / 2
    np.testing.assert_allclose(model_lib.add_weight_decay(model, 'momentum', 1e-4), expected,
                               rtol=1e-5)
    np.testing.assert_allclose(model_lib.add_weight_decay(model, 'adam', 1e-4), expected,
                               rtol=1e-5)
    with pytest.raises(ValueError, match='sgd'):
        model_lib.add_weight_decay(model, 'sgd', 1e-4)


@pytest.fixture(scope='module')
def r50_seven_classes():
    model = model_lib.Model(7, resnet_depth=50, image_size=64)
    model(tf.zeros((1, 64, 64, 6)), training=False)
    return model


def test_lars_decays_and_adapts_exactly_conv_and_projection_kernels(r50_seven_classes):
    model = r50_seven_classes
    expected = {id(m.kernel) for m in model.resnet_model.submodules
                if isinstance(m, tf_keras.layers.Conv2D)}
    expected |= {id(m.kernel) for m in model.projection_head.submodules
                 if isinstance(m, tf_keras.layers.Dense)}
    assert len(expected) == 53 + 3
    lars = LARSOptimizer(0.1, weight_decay=1e-6,
                         exclude_from_weight_decay=['batch_normalization', 'bias',
                                                    'head_supervised'])
    decayed = {id(v) for v in model.trainable_variables if lars.applies_weight_decay(v.name)}
    adapted = {id(v) for v in model.trainable_variables if lars.applies_layer_adaptation(v.name)}
    plain_regex = {id(v) for v in model.trainable_variables if not any(
        re.search(p, v.name) for p in ['batch_normalization', 'bias', 'head_supervised'])}
    assert decayed == adapted == plain_regex == expected


def test_parameter_count_with_seven_classes_is_exact(r50_seven_classes):
    model = r50_seven_classes
    assert _num_params(model.trainable_variables) == 32_181_447
    assert model.supervised_head_input_dim() == 2048




def _depthwise_conv_dtypes(graph):
    """The dtypes of every depthwise convolution in a graph, cond/while branches included."""
    graph_def = graph.as_graph_def()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return {tf.as_dtype(n.attr['T'].type) for n in nodes if n.op == 'DepthwiseConv2dNative'}


def test_blur_runs_in_float32_under_mixed_bfloat16():
    # bfloat16 depthwise convolutions take minutes per 224 px batch on CPU.
    tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
    try:
        model = model_lib.Model(2, resnet_depth=18, image_size=32)
        forward = tf.function(lambda x: model(x, training=True)[0])
        graph = forward.get_concrete_function(tf.TensorSpec([2, 32, 32, 6], tf.float32)).graph
    finally:
        tf_keras.mixed_precision.set_global_policy('float32')
    assert _depthwise_conv_dtypes(graph) == {tf.float32}
    assert model.resnet_model.compute_dtype == 'bfloat16'
