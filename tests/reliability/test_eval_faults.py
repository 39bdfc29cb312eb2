"""SIGTERM during evaluation and export, and `--mode=eval` meeting a damaged checkpoint.

One model_dir, one chain of starts of the same command (train_steps=2, a checkpoint per step):
  A  trains to 2; SIGTERM during the evaluation -> exit 143, one line, no result files
  B  resumes at 2 (nothing to train); SIGTERM during the export -> exit 143, results written,
     no SavedModel (neither under its step nor under a temporary name)
  C  completes: results and SavedModel in place.
Then an evaluator (`--mode=eval`) follows a directory whose newest checkpoint is damaged: it
skips it with a warning, and evaluates the next one when it appears.
"""
import os
import shutil
import time

import pytest
import tensorflow as tf

import runs
import tiny_mura

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _files(model_dir):
    return sorted(os.listdir(model_dir))


def test_sigterm_during_eval_and_export_then_eval_mode_skips_damaged(tmp_path_factory, tmp_path):
    data_dir = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    model_dir = str(tmp_path / 'run')
    flags = runs.tiny_flags(data_dir, model_dir, tiny_mura.DATASET, train_steps=2, checkpoint_steps=1,
                            eval_split='test')
    env, cwd = runs.environment(), str(tmp_path)

    a = runs.run_and_sigterm(flags, env, cwd, after_line='Evaluating ', delay=0)
    assert a.returncode == 143, a.tail()
    assert len(a.error_lines) == 1 and 'during the evaluation of checkpoint' in a.error_lines[0]
    assert not [f for f in _files(model_dir) if f.startswith(('result', 'predictions'))]
    assert 'flags.json' in _files(model_dir)  # written when the run started, before any evaluation

    b = runs.run_and_sigterm(flags, env, cwd, after_line='Eval at step 2', delay=0)
    assert b.returncode == 143, b.tail()
    assert b.resumed_from() == 2
    assert len(b.error_lines) == 1 and 'during the export of checkpoint' in b.error_lines[0]
    assert {'result.json', 'result_2.json', 'predictions_test_2.csv'} <= set(_files(model_dir))
    assert os.listdir(os.path.join(model_dir, 'saved_model')) == []

    c = runs.run(flags, env, cwd)
    assert c.returncode == 0, c.tail()
    assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['2']

    # An evaluator following a directory whose newest checkpoint (ckpt-1) is damaged.
    follow = str(tmp_path / 'follow')
    os.makedirs(follow)
    for name in os.listdir(model_dir):
        if name.startswith('ckpt-1.'):
            shutil.copy(os.path.join(model_dir, name), follow)
    data_file = os.path.join(follow, 'ckpt-1.data-00000-of-00001')
    with open(data_file, 'r+b') as f:
        f.seek(os.path.getsize(data_file) // 2)
        f.write(b'\x00' * 64)
    tf.compat.v1.train.update_checkpoint_state(follow, 'ckpt-1', all_model_checkpoint_paths=['ckpt-1'])
    log_path = str(tmp_path / 'evaluator.log')
    eval_flags = runs.tiny_flags(data_dir, follow, tiny_mura.DATASET, train_steps=2, eval_split='test',
                                 mode='eval')
    evaluator = runs.start(eval_flags, env, cwd, log_path)
    try:
        deadline = time.time() + runs.TIMEOUT
        while 'does not read back' not in open(log_path, encoding='utf-8').read():
            assert evaluator.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
            time.sleep(0.5)
        # The training run writes its next checkpoint: the evaluator evaluates it and stops.
        for name in os.listdir(model_dir):
            if name.startswith('ckpt-2.'):
                shutil.copy(os.path.join(model_dir, name), follow)
        tf.compat.v1.train.update_checkpoint_state(follow, 'ckpt-2',
                                                   all_model_checkpoint_paths=['ckpt-1', 'ckpt-2'])
        done = runs.finish(evaluator, log_path)
    finally:
        if evaluator.poll() is None:
            evaluator.kill()
            evaluator.wait()
    assert done.returncode == 0, done.tail()
    assert 'Checkpoint ' + os.path.join(follow, 'ckpt-1') + ' does not read back' in done.stderr
    assert 'result_1.json' not in _files(follow) and 'result_2.json' in _files(follow)
    assert os.path.exists(data_file)  # the evaluator reads only: nothing moved aside
