"""A `python -m tfds_mura.build` killed while it writes: nothing visible to tfds.load, and a rerun
gives the examples of an uninterrupted build.

TFDS writes a build into `<data_dir>/mura/<config>/incomplete.XXXXXX_<version>/` and renames that
directory to `<version>/` only after the last split and dataset_info.json are written, so a kill at
any point before the rename leaves no `<version>/` directory (the test kills as soon as the first
split's shard appears in the temporary directory).
"""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow_datasets as tfds

import runs
import tfds_mura  # noqa: F401  pylint: disable=unused-import  (registers the mura builder)
from tfds_mura import build
from tfds_mura import synthetic

pytestmark = pytest.mark.reliability

CONFIG = 'elbow'
SPLITS = ('train', 'validation', 'test', 'train_10pct', 'train_1pct')


def _examples(data_dir):
    builder = tfds.builder(f'mura/{CONFIG}', data_dir=data_dir)
    out = {}
    for split in SPLITS:
        ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
        out[split] = sorted((e['image_id'], e['image'], int(e['label'])) for e in tfds.as_numpy(ds))
    return out


def _kill_when_a_shard_appears(proc, data_dir, timeout=300.0):
    pattern = os.path.join(data_dir, 'mura', CONFIG, 'incomplete.*', '*.tfrecord*')
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if glob.glob(pattern):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)


def test_killed_build_leaves_nothing_visible_and_rerun_equals_uninterrupted(tmp_path):
    manual = str(tmp_path / 'manual')
    synthetic.write_synthetic_mura(manual, scale=0.02, parts=[CONFIG], seed=3, workers=1)
    killed_dir = str(tmp_path / 'killed')
    proc = subprocess.Popen([sys.executable, '-m', 'tfds_mura.build', f'--manual_dir={manual}',
                             f'--data_dir={killed_dir}', f'--config={CONFIG}'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=runs.environment(),
                            cwd=str(tmp_path))
    _kill_when_a_shard_appears(proc, killed_dir)
    assert proc.returncode == -signal.SIGKILL, 'the build finished before the kill; use a larger scale'
    assert glob.glob(os.path.join(killed_dir, 'mura', CONFIG, 'incomplete.*'))  # It was mid-write.

    # Nothing of the killed build is visible.
    builder = tfds.builder(f'mura/{CONFIG}', data_dir=killed_dir)
    assert not builder.is_prepared()
    with pytest.raises(AssertionError, match='not found|not prepared|download_and_prepare'):
        tfds.load(f'mura/{CONFIG}', data_dir=killed_dir, split='train', download=False)

    # The same command again completes; its examples equal an uninterrupted build's.
    assert build.run(manual, killed_dir, [CONFIG], overwrite=False) == 0
    reference_dir = str(tmp_path / 'reference')
    assert build.run(manual, reference_dir, [CONFIG], overwrite=False) == 0
    rebuilt, reference = _examples(killed_dir), _examples(reference_dir)
    assert {s: len(v) for s, v in rebuilt.items()} == {s: len(v) for s, v in reference.items()}
    assert rebuilt == reference
