"""Resume never starts from a checkpoint that does not read back (torn or bit-flipped on disk)."""
import os
import shutil

import pytest
import tensorflow as tf

import tiny_runs
from simclr_mura import checkpoints

pytestmark = pytest.mark.reliability


@pytest.fixture
def run_copy(tmp_path_factory, tmp_path):
    source, _ = tiny_runs.pretrain_dir(str(tmp_path_factory.getbasetemp()))
    model_dir = str(tmp_path / 'run')
    shutil.copytree(source, model_dir, ignore=shutil.ignore_patterns('saved_model', 'events.*'))
    return model_dir


def _data_file(prefix):
    return tf.io.gfile.glob(prefix + '.data-*')[0]


def test_complete_checkpoints_are_left_alone(run_copy):
    latest = tf.train.latest_checkpoint(run_copy)
    assert checkpoints.checkpoint_problem(latest) is None
    assert checkpoints.set_aside_damaged(run_copy) == latest
    assert not os.path.exists(os.path.join(run_copy, checkpoints.DAMAGED_DIR))


@pytest.mark.parametrize('damage', ['torn', 'bit flip'])
def test_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_used(run_copy, damage):
    newest = tf.train.latest_checkpoint(run_copy)
    path = _data_file(newest)
    with open(path, 'rb') as f:
        data = bytearray(f.read())
    if damage == 'torn':
        data = data[:len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x40
    with open(path, 'wb') as f:
        f.write(bytes(data))
    assert checkpoints.checkpoint_problem(newest) is not None
    previous = checkpoints.set_aside_damaged(run_copy)
    assert previous.endswith('ckpt-2') and tf.train.latest_checkpoint(run_copy) == previous
    aside = os.path.join(run_copy, checkpoints.DAMAGED_DIR)
    # Kept for inspection, out of the manager's way.
    assert sorted(os.listdir(aside)) == ['ckpt-4.data-00000-of-00001', 'ckpt-4.index']
    assert not tf.io.gfile.glob(newest + '.*')
    assert checkpoints.checkpoint_problem(previous) is None
