"""Tests for simclr_mura.lars_optimizer: official fixtures, exclusions, slots, 2 replicas."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from simclr_mura.fidelity import checks as fidelity
from simclr_mura.lars_optimizer import LARSOptimizer
from simclr_mura.schedule import WarmUpAndCosineDecay

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'official', 'lars.npz')
EXCLUDE = ['batch_normalization', 'bias', 'head_supervised']


@pytest.fixture(scope='module')
def fx():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def _reference_step(w, v, g, lr, momentum, wd, eeta, decay, adapt, nesterov):
    """Float64 NumPy classic-momentum LARS step (the fixture README's update rule)."""
    if decay:
        g = g + wd * w
    trust = 1.0
    if adapt and np.linalg.norm(w) > 0 and np.linalg.norm(g) > 0:
        trust = eeta * np.linalg.norm(w) / np.linalg.norm(g)
    v = momentum * v + lr * trust * g
    update = momentum * v + lr * trust * g if nesterov else v
    return w - update, v


@pytest.mark.parametrize('case', ('classic', 'classic_nesterov', 'nonclassic'))
def test_matches_official(fx, case):
    names = [str(n) for n in fx['var_names']]
    variables = [tf.Variable(fx[f'var{i}_init'], name=n) for i, n in enumerate(names)]
    optimizer = LARSOptimizer(
        float(fx['learning_rate']), momentum=float(fx['momentum']),
        use_nesterov=bool(fx[f'{case}_use_nesterov']), weight_decay=float(fx['weight_decay']),
        exclude_from_weight_decay=[str(x) for x in fx['exclude_from_weight_decay']],
        classic_momentum=bool(fx[f'{case}_classic_momentum']), eeta=float(fx['eeta']))
    for step in range(1, int(fx['num_steps']) + 1):
        optimizer.apply_gradients([(tf.constant(fx[f'var{i}_grad_step{step}']), v)
                                   for i, v in enumerate(variables)])
        for i, var in enumerate(variables):
            np.testing.assert_allclose(var.numpy(), fx[f'{case}_var{i}_value_step{step}'],
                                       rtol=1e-5, atol=1e-6, err_msg=f'{names[i]} step {step}')
            np.testing.assert_allclose(optimizer.get_slot(var, 'Momentum').numpy(),
                                       fx[f'{case}_var{i}_momentum_step{step}'],
                                       rtol=1e-5, atol=1e-6, err_msg=f'{names[i]} step {step}')


def test_exclusion_decisions():
    opt = LARSOptimizer(0.1, weight_decay=1e-4, exclude_from_weight_decay=EXCLUDE)
    assert opt.applies_weight_decay('block/conv2d/kernel:0')
    assert opt.applies_layer_adaptation('projection_head/dense/kernel:0')
    for name in ('resnet/sync_batch_normalization/gamma:0', 'dense/bias:0',
                 'head_supervised/linear_layer/dense/kernel:0'):
        assert not opt.applies_weight_decay(name)
        assert not opt.applies_layer_adaptation(name)  # defaults to the weight-decay list
    # A separate adaptation list; regexes are searched, not full-matched.
    opt = LARSOptimizer(0.1, weight_decay=1e-4, exclude_from_weight_decay=['bias'],
                        exclude_from_layer_adaptation=[r'^head'])
    assert not opt.applies_layer_adaptation('head/kernel:0')
    assert opt.applies_layer_adaptation('x/head/kernel:0')
    assert opt.applies_weight_decay('head/kernel:0')
    # No decay at all when weight_decay is 0.
    assert not LARSOptimizer(0.1).applies_weight_decay('conv2d/kernel:0')


def test_zero_gradient_without_decay_keeps_trust_ratio_finite():
    var = tf.Variable(np.ones((3, 3), np.float32), name='conv/kernel')
    opt = LARSOptimizer(0.5, weight_decay=0.0)
    opt.apply_gradients([(tf.zeros((3, 3)), var)])
    np.testing.assert_array_equal(var.numpy(), np.ones((3, 3)))
    np.testing.assert_array_equal(opt.get_slot(var, 'Momentum').numpy(), np.zeros((3, 3)))


def test_checkpoint_has_momentum_slot_and_no_learning_rate_variable(tmp_path):
    sched = WarmUpAndCosineDecay(0.3, 1000, 128, 'linear', 1, 10)
    opt = LARSOptimizer(sched, weight_decay=1e-6, exclude_from_weight_decay=EXCLUDE)
    var = tf.Variable(np.ones((2, 2), np.float32), name='dense/kernel')
    opt.apply_gradients([(tf.ones((2, 2)), var)])
    prefix = tf.train.Checkpoint(v=var, optimizer=opt).save(str(tmp_path / 'ckpt'))
    keys = [k for k, _ in tf.train.list_variables(prefix)]
    assert 'v/.OPTIMIZER_SLOT/optimizer/Momentum/.ATTRIBUTES/VARIABLE_VALUE' in keys
    assert not [k for k in keys if 'learning_rate' in k]
    # The scheduled rate was used: step 0 of the warmup is lr 0, so nothing moved yet.
    np.testing.assert_array_equal(var.numpy(), np.ones((2, 2)))
    opt.apply_gradients([(tf.ones((2, 2)), var)])
    assert np.all(var.numpy() < 1)


def test_two_replicas_sum_gradients():
    strategy = fidelity.cpu_strategy(2)  # shared: a second strategy would reuse collective keys
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    grads = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(2)]
    with strategy.scope():
        var = tf.Variable(w0, name='block/conv2d/kernel')
        opt = LARSOptimizer(0.2, weight_decay=1e-3, exclude_from_weight_decay=EXCLUDE)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(grads[ctx.replica_id_in_sync_group]))

    @tf.function
    def step(g):
        strategy.run(lambda grad: opt.apply_gradients([(grad, var)]), args=(g,))

    w, v = w0.astype(np.float64), np.zeros_like(w0, np.float64)
    for _ in range(2):
        step(per_replica)
        w, v = _reference_step(w, v, grads[0] + grads[1], 0.2, 0.9, 1e-3, 0.001,
                               True, True, False)
    for value in strategy.experimental_local_results(var):
        np.testing.assert_allclose(value.numpy(), w, rtol=1e-5, atol=1e-6)
    slots = strategy.experimental_local_results(opt.get_slot(var, 'Momentum'))
    for slot in slots:
        np.testing.assert_allclose(slot.numpy(), v, rtol=1e-5, atol=1e-7)


def test_config_round_trip():
    opt = LARSOptimizer(0.05, momentum=0.8, use_nesterov=True, weight_decay=1e-5,
                        exclude_from_weight_decay=['bias'], classic_momentum=False, eeta=0.002)
    clone = LARSOptimizer.from_config(opt.get_config())
    for attr in ('momentum', 'use_nesterov', 'weight_decay', 'exclude_from_weight_decay',
                 'exclude_from_layer_adaptation', 'classic_momentum', 'eeta'):
        assert getattr(clone, attr) == getattr(opt, attr)
    assert isinstance(clone, tf_keras.optimizers.legacy.Optimizer)
