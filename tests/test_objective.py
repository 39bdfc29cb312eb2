"""Tests for simclr_mura.objective: official fixtures, a float64 NumPy reference, 2 replicas."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from simclr_mura import objective
from simclr_mura.fidelity import checks as fidelity

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'official', 'contrastive_loss.npz')
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def fx():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope='module')
def strategy():
    if len(tf.config.list_logical_devices('CPU')) < 2:
        pytest.fail('tests/conftest.py should have created 2 logical CPU devices')
    return fidelity.cpu_strategy(2)  # shared: a second strategy would reuse collective keys


def _reference_loss(hiddens, hidden_norm, temperature):
    """Float64 NumPy NT-Xent; one (2B, D) array per replica -> per replica (loss, logits_ab)."""
    views = []
    for h in hiddens:
        h = np.asarray(h, np.float64)
        if hidden_norm:
            h = h / np.linalg.norm(h, axis=1, keepdims=True)
        views.append(np.split(h, 2))
    all1 = np.concatenate([v[0] for v in views])
    all2 = np.concatenate([v[1] for v in views])
    out = []
    for r, (h1, h2) in enumerate(views):
        b = len(h1)
        total = 0.0
        for i in range(b):
            g = r * b + i
            for anchor, same, other in ((h1[i], all1, all2), (h2[i], all2, all1)):
                pos = anchor @ other[g] / temperature
                negatives = np.concatenate([
                    np.delete(other, g, 0) @ anchor, np.delete(same, g, 0) @ anchor]) / temperature
                logits = np.concatenate([[pos], negatives])
                total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - pos
        out.append((total / b, h1 @ all2.T / temperature))
    return out


@pytest.mark.parametrize('case', ('a', 'b'))
def test_single_replica_matches_official(fx, case):
    loss, logits_ab, labels = objective.add_contrastive_loss(
        fx[f'case_{case}_hidden'], bool(fx[f'case_{case}_hidden_norm']),
        float(fx[f'case_{case}_temperature']))
    np.testing.assert_allclose(loss.numpy(), fx[f'case_{case}_loss'], **TOL)
    np.testing.assert_allclose(logits_ab.numpy(), fx[f'case_{case}_logits_ab'], **TOL)
    np.testing.assert_array_equal(labels.numpy(), fx[f'case_{case}_labels'])
    np.testing.assert_array_equal(objective.contrastive_accuracy(labels, logits_ab).numpy(),
                                  fx[f'case_{case}_contrast_acc'])
    np.testing.assert_allclose(objective.contrastive_entropy(logits_ab).numpy(),
                               fx[f'case_{case}_contrast_entropy'], **TOL)


def _run_two_replicas(strategy, hiddens, hidden_norm, temperature):
    """Per-replica loss/logits/labels, gradient of loss/R w.r.t. the local hidden, and Means."""
    with strategy.scope():
        means = [tf_keras.metrics.Mean() for _ in range(3)]
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(hiddens[ctx.replica_id_in_sync_group], tf.float32))

    def replica_fn(hidden):
        with tf.GradientTape() as tape:
            tape.watch(hidden)
            loss, logits_ab, labels = objective.add_contrastive_loss(
                hidden, hidden_norm, temperature, strategy=strategy)
            scaled = loss / strategy.num_replicas_in_sync
        grad = tape.gradient(scaled, hidden)
        means[0].update_state(loss)
        means[1].update_state(objective.contrastive_accuracy(labels, logits_ab))
        means[2].update_state(objective.contrastive_entropy(logits_ab))
        return loss, logits_ab, labels, grad

    outputs = tf.function(lambda v: strategy.run(replica_fn, args=(v,)))(values)
    per_replica = [[strategy.experimental_local_results(o)[r].numpy() for o in outputs]
                   for r in range(2)]
    return per_replica, [m.result().numpy() for m in means]


def test_two_replicas_match_official(fx, strategy):
    hiddens = [fx['case_c_replica0_hidden'], fx['case_c_replica1_hidden']]
    assert int(fx['case_c_num_replicas']) == 2
    per_replica, means = _run_two_replicas(strategy, hiddens, bool(fx['case_c_hidden_norm']),
                                           float(fx['case_c_temperature']))
    for r, (loss, logits_ab, labels, _) in enumerate(per_replica):
        key = f'case_c_replica{r}'
        np.testing.assert_allclose(loss, fx[f'{key}_loss'], **TOL)
        np.testing.assert_allclose(logits_ab, fx[f'{key}_logits_ab'], **TOL)
        np.testing.assert_array_equal(labels, fx[f'{key}_labels'])
        np.testing.assert_array_equal(
            objective.contrastive_accuracy(labels, logits_ab).numpy(), fx[f'{key}_contrast_acc'])
        np.testing.assert_allclose(objective.contrastive_entropy(logits_ab).numpy(),
                                   fx[f'{key}_contrast_entropy'], **TOL)
    np.testing.assert_allclose(means[0], fx['case_c_metric_contrast_loss'], **TOL)
    np.testing.assert_array_equal(means[1], fx['case_c_metric_contrast_acc'])
    np.testing.assert_allclose(means[2], fx['case_c_metric_contrast_entropy'], **TOL)


def test_two_replica_gradient_equals_single_replica_on_whole_batch(strategy):
    """Negatives flow across replicas: replica r's gradient of loss_r / R w.r.t. its rows equals
    the gradient of the single-replica loss of the concatenated batch (the mean of the R losses)."""
    rng = np.random.default_rng(3)
    b, d = 3, 8
    hiddens = [rng.normal(size=(2 * b, d)).astype(np.float32) for _ in range(2)]
    per_replica, _ = _run_two_replicas(strategy, hiddens, True, 0.2)
    whole = tf.constant(np.concatenate([h[:b] for h in hiddens] + [h[b:] for h in hiddens]))
    with tf.GradientTape() as tape:
        tape.watch(whole)
        loss, _, _ = objective.add_contrastive_loss(whole, True, 0.2)
    grad = tape.gradient(loss, whole).numpy()
    for r in range(2):
        local = per_replica[r][3]
        rows = np.r_[r * b:(r + 1) * b, 2 * b + r * b:2 * b + (r + 1) * b]
        expected = grad[rows]
        np.testing.assert_allclose(local, expected, rtol=1e-4, atol=1e-6)
    # The single-replica loss of the whole batch is the mean of the replica losses.
    np.testing.assert_allclose(loss.numpy(), np.mean([p[0] for p in per_replica]), rtol=1e-5)
    # The comparison is sensitive: if the gathered rows carried no gradient, replica 0's
    # gradient would differ clearly from the whole-batch one.
    x0 = tf.constant(hiddens[0])
    big1, big2 = tf.split(tf.math.l2_normalize(whole, -1), 2, 0)
    with tf.GradientTape() as tape:
        tape.watch(x0)
        n0 = tf.math.l2_normalize(x0, -1)
        loss0, _, _ = objective.contrastive_logits_and_loss(n0[:b], n0[b:], big1, big2, 0, 0.2)
    no_flow = tape.gradient(loss0, x0).numpy() / 2
    assert np.abs(no_flow - per_replica[0][3]).max() > 0.1 * np.abs(per_replica[0][3]).max()


@pytest.mark.parametrize('hidden_norm,temperature', [(True, 0.1), (False, 0.7)])
def test_matches_float64_reference(hidden_norm, temperature):
    rng = np.random.default_rng(4)
    hidden = rng.normal(size=(10, 6)).astype(np.float32)
    loss, logits_ab, labels = objective.add_contrastive_loss(hidden, hidden_norm, temperature)
    ref_loss, ref_logits = _reference_loss([hidden], hidden_norm, temperature)[0]
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(logits_ab.numpy(), ref_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(labels.numpy(), np.eye(5, 10))


def test_reference_agrees_with_official_two_replica_case(fx):
    """The NumPy reference (used by the fidelity tests) reproduces the official case c."""
    hiddens = [fx['case_c_replica0_hidden'], fx['case_c_replica1_hidden']]
    reference = _reference_loss(hiddens, True, float(fx['case_c_temperature']))
    for r, (loss, logits) in enumerate(reference):
        np.testing.assert_allclose(loss, fx[f'case_c_replica{r}_loss'], **TOL)
        np.testing.assert_allclose(logits, fx[f'case_c_replica{r}_logits_ab'], **TOL)


def test_strategy_outside_replica_context_is_an_error(strategy):
    with pytest.raises(ValueError, match='strategy.run'):
        objective.add_contrastive_loss(tf.ones([4, 3]), True, 0.1, strategy=strategy)
    with strategy.scope():
        with pytest.raises(ValueError, match='strategy.run'):
            objective.add_contrastive_loss(tf.zeros([4, 3]) + 1., True, 0.1, strategy=strategy)


def test_supervised_loss_and_accuracy():
    logits = np.array([[2.0, -1.0], [0.3, 0.9], [1.0, 1.5]], np.float32)
    labels = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -np.mean(np.sum(labels * log_softmax, 1))
    np.testing.assert_allclose(objective.add_supervised_loss(labels, logits).numpy(), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(objective.supervised_accuracy(labels, logits).numpy(), 2 / 3)


def test_contrastive_metrics_on_hand_made_logits():
    labels = tf.one_hot([0, 1], 4)
    logits = tf.constant([[5.0, 0.0], [3.0, 1.0]])
    assert objective.contrastive_accuracy(labels, logits).numpy() == 0.5
    p = np.exp([[5.0, 0.0], [3.0, 1.0]])
    p /= p.sum(1, keepdims=True)
    expected = -np.mean(np.sum(p * np.log(p + 1e-8), 1))
    np.testing.assert_allclose(objective.contrastive_entropy(logits).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize('batch', [1, 4, 16])
def test_chance_levels_are_what_uninformative_embeddings_give(batch):
    chance = objective.contrastive_chance_levels(batch)
    # Identical embeddings: every candidate is as similar as the positive.
    hidden = tf.ones([2 * batch, 8])
    loss, _, _ = objective.add_contrastive_loss(hidden, hidden_norm=True, temperature=0.5)
    np.testing.assert_allclose(float(loss), chance['train/contrast_loss_chance'], rtol=1e-5)
    # Random embeddings: the positive wins about once in the N cross-view candidates.
    rng = np.random.default_rng(batch)
    hits = []
    for _ in range(200):
        hidden = tf.constant(rng.normal(size=(2 * batch, 64)), tf.float32)
        _, logits, labels = objective.add_contrastive_loss(hidden, hidden_norm=True, temperature=0.5)
        hits.append(float(objective.contrastive_accuracy(labels, logits)))
    expected = chance['train/contrast_acc_chance']
    assert abs(np.mean(hits) - expected) < 4 * np.sqrt(expected * (1 - expected) / (200 * batch)) + 1e-9
    with pytest.raises(ValueError):
        objective.contrastive_chance_levels(0)
