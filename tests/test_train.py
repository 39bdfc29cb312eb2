"""Tests for simclr_mura.train: exact step count, resume after a killed run, strategies, XLA and
mixed precision, on the tiny synthetic dataset."""
import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tiny_mura
import tiny_runs
from simclr_mura import checkpoints
from simclr_mura import main
from simclr_mura import recipes
from simclr_mura import train
from simclr_mura.config import Config, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))


def _steps(model_dir):
    return sorted(int(f[len('ckpt-'):-len('.index')]) for f in os.listdir(model_dir)
                  if f.startswith('ckpt-') and f.endswith('.index'))


def _run_py(args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'run.py'), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_killed_run_resumes_at_saved_step_and_ends_at_train_steps(data_dir, tmp_path):
    model_dir = str(tmp_path / 'resume')
    args = [f'--data_dir={data_dir}', f'--dataset={tiny_mura.DATASET}', f'--model_dir={model_dir}',
            '--mode=train', '--resnet_depth=18', '--image_size=64', '--train_batch_size=8',
            '--train_steps=7', '--checkpoint_steps=2', '--warmup_epochs=0', '--seed=3',
            '--keep_checkpoint_max=10']
    first = _run_py(args)
    deadline = time.time() + 300
    # Wait for the manager's state file (written after the checkpoint files) to name a checkpoint.
    while not (os.path.isdir(model_dir) and tf.train.latest_checkpoint(model_dir)):
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, 'no checkpoint after 300 s'
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    latest = tf.train.latest_checkpoint(model_dir)
    saved_step = int(latest.rsplit('-', 1)[1])
    assert saved_step < 7, saved_step  # killed part-way

    second = _run_py(args)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    assert f'Resuming from checkpoint {latest} at step {saved_step} (train_steps 7)' in output
    # Exactly train_steps: the last loop is shortened (6 -> 7), never run past it.
    assert _steps(model_dir)[-1] == 7 and all(step <= 7 for step in _steps(model_dir))
    assert tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-7')).get_tensor(
        'global_step/.ATTRIBUTES/VARIABLE_VALUE') == 7
    assert 'Step 7/7: loss ' in output and 'examples/s, ETA 0:00:00' in output
    assert 'Training complete: step 7 of 7.' in output


def test_run_py_without_a_built_dataset_explains_how_to_get_mura(tmp_path):
    proc = _run_py([f'--data_dir={tmp_path}', '--mode=train_then_eval', '--train_mode=pretrain'])
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, output
    lines = [line for line in output.splitlines() if line.startswith('run.py: error:')]
    assert 'The TFDS dataset mura/all is not built in' in lines[0]
    assert 'python -m tfds_mura.build' in lines[0] and 'bash run.sh demo' in lines[0]
    assert any('--model_dir is required' in line for line in lines)


def test_default_strategy_is_mirrored_over_the_local_devices():
    strategy = train.make_strategy(Config())
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    # No GPU here: the CPU devices (tests/conftest.py splits the CPU into 2 logical ones).
    assert strategy.num_replicas_in_sync == len(tf.config.list_logical_devices('CPU'))
    single = train.make_strategy(Config(jit_compile=True))
    assert not isinstance(single, tf.distribute.MirroredStrategy)


@pytest.mark.slow
def test_jit_compile_and_mixed_precision_train(data_dir, tmp_path):
    config = tiny_runs.base_config(data_dir, str(tmp_path / 'xla'), train_steps=1, jit_compile=True,
                                   mixed_precision='mixed_bfloat16', use_blur=False)
    try:
        result = main.run(config, strategy=tf.distribute.get_strategy())
    finally:
        train.configure_runtime(Config())  # back to float32 for the other tests
    assert result.final_step == 1 and _steps(config.model_dir) == [1]


def test_jit_compile_is_refused_under_mirrored_strategy(data_dir, tmp_path):
    config = tiny_runs.base_config(data_dir, str(tmp_path / 'xla2'), train_steps=1, jit_compile=True)
    with pytest.raises(ConfigError, match='--jit_compile cannot run under MirroredStrategy'):
        main.run(config, strategy=tiny_runs.strategy(1))


def test_seeded_blur_draws_from_a_stream_apart_from_the_data_seeds():
    """Example k of the seeded input gets (seed, k) (data._with_position_seeds); the blur of step k
    must not get the same seed, or example k's flip and crop would be tied to step k's blur."""
    from simclr_mura import data
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=1)
    positions = data._with_position_seeds(tf.data.Dataset.range(64), 7, context)
    data_seeds = {tuple(seed.numpy()) for _, seed in positions}
    assert (7, 5) in data_seeds and len(data_seeds) == 64
    for replicas in (1, 2):
        blur_seeds = [tuple(train.blur_seed(7, step, replicas, r).numpy())
                      for step in range(32) for r in range(replicas)]
        assert len(set(blur_seeds)) == len(blur_seeds)  # one seed per replica step
        assert not data_seeds & set(blur_seeds)
        # Still a function of (seed, step, replica): a resumed run blurs as the uninterrupted one.
        assert tuple(train.blur_seed(7, 3, replicas, 0).numpy()) == blur_seeds[3 * replicas]
    assert tuple(train.blur_seed(8, 3, 1, 0).numpy()) != tuple(train.blur_seed(7, 3, 1, 0).numpy())


def _write_step_checkpoint(source_prefix, config, model_dir, form):
    """Checkpoint `source_prefix` of a momentum run rewritten into `model_dir` at the same step,
    its optimizer state as this port writes it ('port') or as the original does ('original':
    legacy Keras SGD slots for the variables it optimizes). Returns the largest momentum value."""
    recipe = recipes.for_config(config)
    model = recipe.build_model(2)
    with tf.GradientTape() as tape:  # the training step's loss, on a batch of blank images
        loss, _ = recipe.compute_loss(
            model, tf.zeros([2, config.image_size, config.image_size, 3]),
            {'label': tf.one_hot([0, 1], 2), 'weight': tf.ones([2])},
            strategy=tf.distribute.get_strategy())
    grads = tape.gradient(loss, model.trainable_variables)
    optimized = [v for g, v in zip(grads, model.trainable_variables) if g is not None]
    assert 0 < len(optimized) < len(model.trainable_variables)  # fine_tune_after_block freezes some
    optimizer = recipe.optimizer(0.1)
    optimizer.build(optimized)  # as the training step builds it
    checkpoint, _ = checkpoints.make_manager(model, optimizer, model_dir, 1)
    checkpoint.restore(source_prefix).expect_partial()
    step = int(optimizer.iterations.numpy())
    if form == 'original':
        legacy = tf_keras.optimizers.legacy.SGD(0.1, momentum=0.9, nesterov=True)
        legacy._create_all_weights(optimized)  # pylint: disable=protected-access
        for variable, momentum in zip(optimized, optimizer.momentums):
            legacy.get_slot(variable, 'momentum').assign(momentum)
        legacy.iterations.assign(step)
        checkpoint = tf.train.Checkpoint(model=model, global_step=legacy.iterations, optimizer=legacy)
    saved = tf.train.CheckpointManager(checkpoint, model_dir, 1).save(checkpoint_number=step)
    assert checkpoints.legacy_slot_names(saved) == (['momentum'] if form == 'original' else [])
    return max(float(np.max(np.abs(m.numpy()))) for m in optimizer.momentums)


@pytest.mark.slow
def test_resuming_an_original_momentum_checkpoint_continues_its_momentum(tmp_path_factory, tmp_path):
    """A model_dir whose newest checkpoint holds the original's momentum slots resumes with that
    momentum: its next step equals the same resume from the port's own checkpoint."""
    source_dir, _, config = tiny_runs.finetune_dir(str(tmp_path_factory.getbasetemp()))
    assert config.optimizer == 'momentum'
    final = {}
    for form in ('port', 'original'):
        model_dir = str(tmp_path / form)
        largest_momentum = _write_step_checkpoint(os.path.join(source_dir, 'ckpt-2'), config,
                                                  model_dir, form)
        assert largest_momentum > 1e-6  # the state matters to the next step
        resumed = dataclasses.replace(config, model_dir=model_dir, mode='train', train_steps=3)
        assert main.run(resumed, strategy=tiny_runs.strategy(1)).final_step == 3
        reader = tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-3'))
        final[form] = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                       if k.startswith('model/') and 'OPTIMIZER_SLOT' not in k}
    assert final['port'].keys() == final['original'].keys()
    for key, value in final['port'].items():
        np.testing.assert_allclose(final['original'][key], value, rtol=1e-6, atol=1e-9, err_msg=key)
