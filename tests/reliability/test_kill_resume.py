"""A tiny pretraining run killed at every kind of point, restarted each time with the same command.

One model_dir, one chain of starts (each start costs a TensorFlow import and a trace):
  A  SIGKILL after steps 5-8 ran, before their checkpoint       -> newest complete: ckpt-4
  B  resumes at 4; SIGKILL after tearing the new ckpt-8          -> ckpt-8 recorded but torn
  C  resumes at 4 (ckpt-8 set aside); SIGTERM during steps 9-12  -> checkpoint at the current step S
  D  resumes at S; trains to 12; SIGKILL during evaluation       -> predictions written, no result.json
  E  resumes at 12 (nothing to train); SIGKILL during the export -> SavedModel under a temporary name
  F  completes: result files complete and parseable, SavedModel in place.
The final checkpoint must equal, bit for bit, the one of an uninterrupted run of the same command
(--seed --deterministic on CPU): that proves no step was skipped or applied twice, the data stream
continued where it stopped and the augmentations repeated exactly. A fake credential in the
environment must appear in no file the runs wrote.
"""
import csv
import glob
import os
import signal

import numpy as np
import pytest

import runs
import tiny_mura

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

TRAIN_STEPS = 12
CHECKPOINT_STEPS = 4
SECRET = 'sk-fake-credential-0f9e8d7c6b5a'


def _checkpoint_steps(model_dir):
    """Steps of the checkpoints the state file lists (what a restart would consider)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    state = tf.train.get_checkpoint_state(model_dir)
    return [int(p.rsplit('-', 1)[1]) for p in state.all_model_checkpoint_paths] if state else []


def _written_text(model_dir):
    texts = {}
    for path in glob.glob(os.path.join(model_dir, '**', '*'), recursive=True):
        if os.path.isfile(path):
            with open(path, 'rb') as f:
                texts[path] = f.read()
    return texts


def test_killed_at_every_point_resumes_exactly(tmp_path_factory, request):
    base = tmp_path_factory.mktemp('kill_resume')
    data_dir = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura_shared'))
    model_dir = str(base / 'run')
    flags = runs.tiny_flags(data_dir, model_dir, tiny_mura.DATASET, train_steps=TRAIN_STEPS,
                            checkpoint_steps=CHECKPOINT_STEPS)
    env = dict(SIMCLR_MURA_TEST_TOKEN=SECRET)
    cwd = str(base)

    # The same command, never interrupted (training only; evaluation does not change weights),
    # running alongside the chain.
    reference_dir = str(base / 'reference')
    reference_flags = runs.tiny_flags(data_dir, reference_dir, tiny_mura.DATASET, train_steps=TRAIN_STEPS,
                                      checkpoint_steps=CHECKPOINT_STEPS, mode='train')
    reference_proc = runs.start(reference_flags, runs.environment(), cwd,
                                log_path=str(base / 'reference.log'))
    request.addfinalizer(lambda: reference_proc.poll() is None and reference_proc.kill())

    a = runs.run(flags, runs.environment('train_step@8', **env), cwd)
    assert a.returncode == -signal.SIGKILL, a.tail()
    assert _checkpoint_steps(model_dir) == [4]
    assert not glob.glob(os.path.join(model_dir, 'ckpt-8*'))

    b = runs.run(flags, runs.environment('checkpoint@8', **env), cwd)
    assert b.returncode == -signal.SIGKILL, b.tail()
    assert b.resumed_from() == 4 and 'Taking over the stale lock' in b.stderr
    assert _checkpoint_steps(model_dir) == [4, 8]  # ckpt-8 is recorded, but torn.

    c = runs.run_and_sigterm(flags, runs.environment(**env), cwd, after_line=f'Step 8/{TRAIN_STEPS}',
                             delay=0.3)
    assert c.returncode == 143, c.tail()
    assert 'does not read back' in c.stderr and c.resumed_from() == 4
    assert os.path.exists(os.path.join(model_dir, 'damaged_checkpoints', 'ckpt-8.index'))
    assert len(c.error_lines) == 1 and 'stopped by SIGTERM at step' in c.error_lines[0], c.tail()
    stopped_at = int(c.error_lines[0].split('at step ')[1].split()[0])
    # Usually inside the loop of steps 9-12 (a checkpoint no regular save would write); on a very
    # busy machine the signal can arrive before that loop starts, and the run stops at 8.
    assert 8 <= stopped_at <= TRAIN_STEPS
    assert _checkpoint_steps(model_dir)[-1] == stopped_at
    assert runs.checkpoint_step(os.path.join(model_dir, f'ckpt-{stopped_at}')) == stopped_at

    d = runs.run(flags, runs.environment('eval', **env), cwd)
    assert d.returncode == -signal.SIGKILL, d.tail()
    assert d.resumed_from() == stopped_at
    assert os.path.exists(os.path.join(model_dir, f'predictions_validation_{TRAIN_STEPS}.csv'))
    assert not os.path.exists(os.path.join(model_dir, 'result.json'))

    e = runs.run(flags, runs.environment('export', **env), cwd)
    assert e.returncode == -signal.SIGKILL, e.tail()
    assert e.resumed_from() == TRAIN_STEPS
    assert f'Training complete: step {TRAIN_STEPS} of {TRAIN_STEPS}' in e.stderr
    assert glob.glob(os.path.join(model_dir, 'saved_model', '.tmp-*'))
    assert not os.path.exists(os.path.join(model_dir, 'saved_model', str(TRAIN_STEPS)))

    f = runs.run(flags, runs.environment(**env), cwd)
    assert f.returncode == 0, f.tail()
    final = os.path.join(model_dir, f'ckpt-{TRAIN_STEPS}')
    assert runs.checkpoint_step(final) == TRAIN_STEPS
    result = runs.read_json(os.path.join(model_dir, 'result.json'))
    assert result['global_step'] == TRAIN_STEPS
    assert result == runs.read_json(os.path.join(model_dir, f'result_{TRAIN_STEPS}.json'))
    assert runs.read_json(os.path.join(model_dir, 'flags.json'))['train_steps'] == TRAIN_STEPS
    with open(os.path.join(model_dir, f'predictions_validation_{TRAIN_STEPS}.csv')) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 11 and all(0.0 <= float(r['probability']) <= 1.0 for r in rows)
    export = os.path.join(model_dir, 'saved_model', str(TRAIN_STEPS))
    assert os.path.exists(os.path.join(export, 'saved_model.pb'))
    assert os.path.exists(os.path.join(export, 'variables', 'variables.index'))
    assert not glob.glob(os.path.join(model_dir, 'saved_model', '.tmp-*'))
    assert not os.path.exists(os.path.join(model_dir, 'run.lock'))

    # Credentials in the environment never reach a file the runs wrote.
    leaked = [p for p, data in _written_text(model_dir).items() if SECRET.encode() in data]
    assert not leaked

    reference = runs.finish(reference_proc, str(base / 'reference.log'))
    assert reference.returncode == 0, reference.tail()
    expected = runs.model_weights(os.path.join(reference_dir, f'ckpt-{TRAIN_STEPS}'))
    actual = runs.model_weights(final)
    assert expected.keys() == actual.keys()
    different = [k for k in expected if not np.array_equal(expected[k], actual[k])]
    assert not different, f'{len(different)} of {len(expected)} tensors differ, e.g. {different[:3]}'
