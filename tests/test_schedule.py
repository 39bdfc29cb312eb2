"""Tests for simclr_mura.schedule: official CSV fixtures, edge cases, the no-overshoot loop."""
import csv
import itertools
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from simclr_mura import schedule

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'official')


def _rows(name):
    with open(os.path.join(FIXTURES, name), newline='') as f:
        return list(csv.DictReader(f))


def _lr_configs():
    configs = {}
    for row in _rows('lr_schedule.csv'):
        configs.setdefault(row['config_id'], []).append(row)
    return sorted(configs.items())


@pytest.mark.parametrize('config_id,rows', _lr_configs())
def test_lr_schedule_matches_official(config_id, rows):
    first = rows[0]
    sched = schedule.WarmUpAndCosineDecay(
        float(first['base_learning_rate']), int(first['num_train_examples']),
        int(first['train_batch_size']), first['learning_rate_scaling'],
        float(first['warmup_epochs']), int(first['train_epochs']), int(first['train_steps_flag']))
    assert sched.total_steps == int(first['total_train_steps']), config_id
    assert sched.warmup_steps == int(first['warmup_steps']), config_id
    steps = np.array([float(r['step']) for r in rows], np.float32)
    expected = np.array([float(r['learning_rate']) for r in rows])
    actual = sched(steps).numpy()
    assert np.max(np.abs(actual - expected)) <= 1e-6 * sched.scaled_learning_rate
    # Scalar steps as the optimizer passes them (int64 iteration counter) agree too.
    for step, value in zip(steps[::37], expected[::37]):
        scalar = sched(tf.constant(int(step), tf.int64)).numpy()
        assert abs(scalar - value) <= 1e-6 * sched.scaled_learning_rate


def test_train_steps_match_official():
    rows = _rows('train_steps.csv')
    assert rows
    for row in rows:
        v = {k: int(x) for k, x in row.items()}
        epoch_steps = schedule.get_epoch_steps(v['num_train_examples'], v['train_batch_size'])
        train_steps = schedule.get_train_steps(v['num_train_examples'], v['train_batch_size'],
                                               v['train_epochs'], v['train_steps_flag'])
        assert train_steps == v['train_steps']
        assert epoch_steps == v['epoch_steps']
        assert schedule.get_checkpoint_steps(v['checkpoint_steps_flag'], v['checkpoint_epochs'],
                                             epoch_steps) == v['checkpoint_steps']
        assert schedule.get_eval_steps(v['eval_steps_flag'], v['num_eval_examples'],
                                       v['eval_batch_size']) == v['eval_steps']


def test_epoch_steps_round_half_to_even():
    assert schedule.get_epoch_steps(5, 2) == 2  # 2.5
    assert schedule.get_epoch_steps(7, 2) == 4  # 3.5


def test_zero_warmup_starts_at_peak_and_decays_to_zero():
    sched = schedule.WarmUpAndCosineDecay(0.1, 36, 64, 'linear', 0, 20)
    peak = 0.1 * 64 / 256
    assert sched.warmup_steps == 0
    np.testing.assert_allclose(sched(0).numpy(), peak, rtol=1e-7)
    total = sched.total_steps
    np.testing.assert_allclose(sched(total / 2).numpy(), peak / 2, rtol=1e-6)
    assert sched(total).numpy() == pytest.approx(0, abs=1e-9)
    assert sched(total + 50).numpy() == pytest.approx(0, abs=1e-9)  # no rise after the end


def test_warmup_is_linear_from_zero_and_sqrt_scaling():
    sched = schedule.WarmUpAndCosineDecay(0.075, 3964, 8, 'sqrt', 10, 50)
    peak = 0.075 * math.sqrt(8)
    w = sched.warmup_steps
    assert sched(0).numpy() == 0
    np.testing.assert_allclose(sched(w / 4).numpy(), peak / 4, rtol=1e-6)
    np.testing.assert_allclose(sched(w).numpy(), peak, rtol=1e-6)


def test_total_equal_to_warmup_gives_no_nan():
    # 1000 examples, batch 100, 1 epoch -> total 11; warmup_epochs 1.1 -> 11 warmup steps.
    sched = schedule.WarmUpAndCosineDecay(1.0, 1000, 100, 'linear', 1.1, 1)
    assert sched.total_steps == sched.warmup_steps == 11
    values = sched(np.arange(0, 20, dtype=np.float32)).numpy()
    assert np.all(np.isfinite(values))
    assert np.all(values[11:] == 0)


def test_bad_scaling_is_rejected():
    with pytest.raises(ValueError, match='learning_rate_scaling'):
        schedule.WarmUpAndCosineDecay(0.1, 10, 2, 'log', 0, 1)


def test_get_config_round_trip():
    sched = schedule.WarmUpAndCosineDecay(0.3, 1000, 128, 'linear', 5, 100, train_steps=300)
    clone = schedule.WarmUpAndCosineDecay.from_config(sched.get_config())
    steps = np.arange(0, 301, 7, dtype=np.float32)
    np.testing.assert_array_equal(clone(steps).numpy(), sched(steps).numpy())


def _original_loop(train_steps, steps_per_loop):
    """The original's loop: whole loops of steps_per_loop until cur_step >= train_steps."""
    step = 0
    while step < train_steps:
        step += steps_per_loop
    return step


def _fixed_loop(train_steps, steps_per_loop):
    step, loops = 0, 0
    while True:
        n = schedule.steps_in_next_loop(step, train_steps, steps_per_loop)
        if n == 0:
            return step, loops
        assert 1 <= n <= steps_per_loop
        step += n
        loops += 1


def test_loop_ends_exactly_at_train_steps():
    overshoots = 0
    for train_steps, steps_per_loop in itertools.product(range(1, 60), range(1, 25)):
        end, loops = _fixed_loop(train_steps, steps_per_loop)
        assert end == train_steps
        assert loops == math.ceil(train_steps / steps_per_loop)
        overshoots += _original_loop(train_steps, steps_per_loop) > train_steps
    assert overshoots > 0  # the original does overshoot for many of these combinations
    # Resuming from a checkpoint in the middle continues to the same end.
    assert schedule.steps_in_next_loop(95, 100, 10) == 5
    assert schedule.steps_in_next_loop(100, 100, 10) == 0
    assert schedule.steps_in_next_loop(120, 100, 10) == 0


def test_steps_per_loop_must_be_positive():
    with pytest.raises(ValueError, match='steps_per_loop'):
        schedule.steps_in_next_loop(0, 10, 0)
