"""Bad input to a run: one clear error line, a non-zero exit, and existing good results untouched.

The dataset cases (manual dir, zip, CSVs, images) are tested on the TFDS builder in
tests/test_mura_builder.py; flags, splits, batch sizes and architecture mismatches partly in
tests/test_main.py and tests/test_flags_def.py. This file adds the cases that go through `run.py`
as a user would start it (flag errors, a --checkpoint that points nowhere, a full disk) and checks
that a model_dir holding a finished run's results is left byte for byte as it was.
docs/reliability.md lists every case with its test.
"""
import hashlib
import os
import resource
import shutil

import pytest
import tensorflow as tf

import runs
import tiny_mura
import tiny_runs
from simclr_mura import main
from simclr_mura.config import ConfigError
from tfds_mura.mura.mura_dataset_builder import Builder as MuraBuilder

pytestmark = pytest.mark.reliability


def _snapshot(directory):
    """Relative path -> sha256 of every file under `directory`."""
    out = {}
    for folder, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp())


@pytest.fixture(scope='module')
def data_dir(base):
    return tiny_mura.build(os.path.join(base, 'tiny_mura'))


@pytest.fixture
def finished_run(base, tmp_path):
    """A copy of a finished pretraining run (checkpoints, result files, export) to keep intact."""
    source, _ = tiny_runs.pretrain_dir(base)
    model_dir = str(tmp_path / 'finished')
    shutil.copytree(source, model_dir)
    return model_dir


def test_flagfile_with_an_unknown_flag_is_one_line_and_writes_nothing(data_dir, finished_run, tmp_path):
    flagfile = tmp_path / 'typo.cfg'
    flagfile.write_text(f'--model_dir={finished_run}\n--data_dir={data_dir}\n--dataset={tiny_mura.DATASET}\n'
                        '--train_stpes=100\n')
    before = _snapshot(finished_run)
    result = runs.run([f'--flagfile={flagfile}'], runs.environment(), str(tmp_path))
    assert result.returncode == 2
    assert result.error_lines == ["run.py: error: Unknown command line flag 'train_stpes' (on the command "
                                  'line or in a --flagfile); did you mean --train_steps?; see python run.py '
                                  '--helpfull'], result.tail()
    assert 'Traceback' not in result.stderr
    assert _snapshot(finished_run) == before


def test_checkpoint_pointing_nowhere_is_one_line(data_dir, tmp_path):
    config = tiny_runs.base_config(data_dir, str(tmp_path / 'ft'), train_mode='finetune', train_steps=1,
                                   checkpoint=str(tmp_path / 'no_such_run'))
    with pytest.raises(ConfigError) as info:
        main.run(config, strategy=tiny_runs.strategy(1))
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith('--checkpoint:') and 'no_such_run' in message and 'ckpt-1234' in message
    assert not tf.train.latest_checkpoint(str(tmp_path / 'ft'))
    assert not os.path.exists(tmp_path / 'ft' / 'run.lock')


def test_disk_full_during_a_checkpoint_write_keeps_the_last_checkpoint(data_dir, finished_run, tmp_path):
    """RLIMIT_FSIZE makes every write past 2 MiB fail with EFBIG (Python ignores SIGXFSZ), as a
    full disk fails writes with ENOSPC: the run resumes from ckpt-4, trains to 6 and cannot write
    ckpt-6."""
    before = _snapshot(finished_run)
    latest = tf.train.latest_checkpoint(finished_run)
    limit = 2 * 2**20

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    flags = [f'--data_dir={data_dir}', f'--dataset={tiny_mura.DATASET}', f'--model_dir={finished_run}',
             '--mode=train_then_eval', '--train_mode=pretrain', '--resnet_depth=18', '--image_size=64',
             '--train_batch_size=8', '--eval_batch_size=8', '--warmup_epochs=0', '--checkpoint_steps=2',
             '--seed=1', '--learning_rate=0.1', f'--train_steps={tiny_runs.PRETRAIN_STEPS + 2}']
    result = runs.run(flags, runs.environment(), str(tmp_path), preexec_fn=limit_file_size)
    assert result.returncode == 1, result.tail()
    assert len(result.error_lines) == 1, result.tail()
    line = result.error_lines[0]
    assert 'could not write checkpoint' in line and 'ckpt-6' in line and 'File too large' in line
    assert f'the newest complete checkpoint is {latest}' in line and 'rerun the same command' in line
    assert 'Traceback' not in result.stderr
    # The finished run's files are all there, unchanged; no piece of ckpt-6 is left.
    after = _snapshot(finished_run)
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [k for k in after if 'ckpt-6' in k]
    assert tf.train.latest_checkpoint(finished_run) == latest
    assert not os.path.exists(os.path.join(finished_run, 'run.lock'))


def test_failed_rebuild_with_overwrite_keeps_the_existing_dataset_and_a_good_one_replaces_it(
        tmp_path, capsys):
    """TFDS removes the old version only after the new one is complete, so bad input to
    `tfds_mura.build --overwrite` leaves the existing build as it was."""
    import tfds_mura  # pylint: disable=import-outside-toplevel
    from tfds_mura import build  # pylint: disable=import-outside-toplevel
    dummy = os.path.join(os.path.dirname(tfds_mura.__file__), 'mura', 'dummy_data')
    data_dir = str(tmp_path / 'data')
    assert build.run(dummy, data_dir, ['hand'], overwrite=False) == 0
    existing = os.path.join(data_dir, 'mura', 'hand')
    before = _snapshot(existing)
    damaged = tmp_path / 'damaged'
    shutil.copytree(dummy, damaged)
    (damaged / 'MURA-v1.1' / 'train_image_paths.csv').write_text('path\n')
    capsys.readouterr()
    assert build.run(str(damaged), data_dir, ['hand'], overwrite=True) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and 'header row' in err[0]
    assert _snapshot(existing) == before
    # A good rebuild replaces it, leaving no temporary or replaced directory behind.
    assert build.run(dummy, data_dir, ['hand'], overwrite=True) == 0
    assert 'built in' in capsys.readouterr().out
    assert not [name for name in os.listdir(data_dir) if name.startswith('.')]
    assert sorted(os.listdir(existing)) == [str(MuraBuilder.VERSION)]
    assert _snapshot(existing).keys() == before.keys()


def test_bad_manual_dir_given_to_run_is_one_line_and_builds_nothing(tmp_path):
    """`run.py --tfds_manual_dir=...` builds on first use; bad MURA input there is a ConfigError line
    (run.py: exit 2), not a traceback."""
    empty = tmp_path / 'manual'
    empty.mkdir()
    data_dir = str(tmp_path / 'data')
    config = tiny_runs.base_config(data_dir, str(tmp_path / 'run'), tfds_manual_dir=str(empty))
    with pytest.raises(ConfigError) as info:
        main.run(config, strategy=tiny_runs.strategy(1))
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f'--tfds_manual_dir={empty}: ') and 'aimi.stanford.edu' in message
    assert not os.path.exists(os.path.join(data_dir, 'mura', 'elbow', str(MuraBuilder.VERSION)))
    assert not os.path.exists(tmp_path / 'run')
