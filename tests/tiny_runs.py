"""Small SimCLR runs on the tiny synthetic dataset, made once per test session and shared.

`pretrain_dir`: pretraining with linear eval, train_then_eval, under MirroredStrategy over two
logical CPUs (global batch 8), 4 steps with a checkpoint every 2.
`finetune_dir`: linear evaluation of it (fine_tune_after_block=4, momentum, MURA class weights)
on train_1pct, evaluated on the test split, on one replica, from `--checkpoint=<pretrain dir>`.
`baseline_runs`: the DenseNet-169 baseline (32 px, Adam, plateau decay) on train_1pct, stopped after
4 steps (mode=train) and resumed to 7 (train_then_eval, evaluated on test, exported); the one
DenseNet-169 the suite trains (tests/test_baseline.py and tests/test_report.py share it).
"""
import os

import tensorflow as tf

import tiny_mura
from simclr_mura import main
from simclr_mura.config import Config

_CACHE = {}
PRETRAIN_STEPS = 4
FINETUNE_STEPS = 3
BASELINE_SIZE = 32
BASELINE_STEPS_FIRST, BASELINE_STEPS_TOTAL = 4, 7


def base_config(data_dir: str, model_dir: str, **changes) -> Config:
    """A tiny valid configuration (ResNet-18, 64 px) on the tiny mura/elbow dataset."""
    values = dict(dataset=tiny_mura.DATASET, data_dir=data_dir, model_dir=model_dir, resnet_depth=18,
                  image_size=64, train_batch_size=8, eval_batch_size=8, warmup_epochs=0,
                  checkpoint_steps=2, seed=1)
    values.update(changes)
    return Config(**values)


def strategy(replicas: int) -> tf.distribute.MirroredStrategy:
    """A MirroredStrategy over `replicas` logical CPUs, with collective keys of its own."""
    devices = [f'/cpu:{i}' for i in range(replicas)]
    if len(tf.config.list_logical_devices('CPU')) < replicas:
        raise RuntimeError(f'needs {replicas} logical CPUs (tests/conftest.py makes 2)')
    # Two strategies of one test (e.g. a shared run, then an evaluation) would otherwise number
    # their collectives from the same key; see tests/conftest.py.
    fresh_collective_keys()
    return tf.distribute.MirroredStrategy(devices)


def fresh_collective_keys() -> None:
    cls = tf.distribute.MirroredStrategy
    if hasattr(cls, '_collective_key_base'):
        cls._collective_key_base += 100_000  # pylint: disable=protected-access


def pretrain_dir(base_dir: str):
    """(model_dir, RunResult) of the shared pretraining run."""
    if 'pretrain' not in _CACHE:
        data_dir = tiny_mura.build(os.path.join(base_dir, 'tiny_mura'))
        model_dir = os.path.join(base_dir, 'pretrain')
        config = base_config(data_dir, model_dir, mode='train_then_eval', train_mode='pretrain',
                             train_steps=PRETRAIN_STEPS, learning_rate=0.1)
        _CACHE['pretrain'] = (model_dir, main.run(config, strategy=strategy(2)))
    return _CACHE['pretrain']


def finetune_dir(base_dir: str):
    """(model_dir, RunResult, Config) of the shared linear-evaluation run."""
    if 'finetune' not in _CACHE:
        source, _ = pretrain_dir(base_dir)
        data_dir = tiny_mura.build(os.path.join(base_dir, 'tiny_mura'))
        model_dir = os.path.join(base_dir, 'finetune')
        config = base_config(data_dir, model_dir, mode='train_then_eval', train_mode='finetune',
                             checkpoint=source, train_split='train_1pct', eval_split='test',
                             train_steps=FINETUNE_STEPS, fine_tune_after_block=4, optimizer='momentum',
                             learning_rate=0.1, weight_decay=0.0, class_weighting='mura',
                             global_bn=False)
        _CACHE['finetune'] = (model_dir, main.run(config, strategy=strategy(1)), config)
    return _CACHE['finetune']


def _checkpoint_steps(model_dir):
    return sorted(int(f[len('ckpt-'):-len('.index')]) for f in os.listdir(model_dir)
                  if f.startswith('ckpt-') and f.endswith('.index'))


def baseline_runs(base_dir: str):
    """The shared baseline run: dict(base, data_dir, model_dir, first, second (RunResults),
    after_first (checkpoint steps after the first run))."""
    if 'baseline' not in _CACHE:
        data_dir = tiny_mura.build(os.path.join(base_dir, 'tiny_mura'))
        model_dir = os.path.join(base_dir, 'baseline')
        config = base_config(
            data_dir, model_dir, mode='train', train_mode='baseline', optimizer='adam',
            learning_rate=1e-3, weight_decay=0.0, image_size=BASELINE_SIZE, train_batch_size=2,
            eval_batch_size=4, train_split='train_1pct', eval_split='test',
            train_steps=BASELINE_STEPS_FIRST, checkpoint_steps=2, keep_checkpoint_max=10,
            baseline_weights='none', baseline_rotation_degrees=10, baseline_plateau_decay=True)
        first = main.run(config, strategy=strategy(1))
        after_first = _checkpoint_steps(model_dir)
        second = main.run(config.replace(mode='train_then_eval', train_steps=BASELINE_STEPS_TOTAL),
                          strategy=strategy(1))
        _CACHE['baseline'] = dict(base=base_dir, data_dir=data_dir, model_dir=model_dir, first=first,
                                  second=second, after_first=after_first)
    return _CACHE['baseline']
