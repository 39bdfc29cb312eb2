"""Test-session set-up: two logical CPU devices, so MirroredStrategy runs real multi-replica code."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 2


def _split_cpu():
    cpus = tf.config.list_physical_devices('CPU')
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)
    except RuntimeError:
        pass  # TF already initialised its devices; tests that need two replicas assert it.


_split_cpu()


import pytest  # noqa: E402

# Every MirroredStrategy created in one process numbers its collective ops from the same base key;
# a second strategy whose collectives have other shapes then fails with "Shape mismatch in the
# collective instance". Tests create many strategies in one process, so each test gets its own key
# range (TensorFlow's own distribute tests do the same).
_COLLECTIVE_KEY_STRIDE = 100_000


@pytest.fixture(autouse=True)
def _fresh_collective_keys():
    cls = tf.distribute.MirroredStrategy
    if hasattr(cls, '_collective_key_base'):
        cls._collective_key_base += _COLLECTIVE_KEY_STRIDE
    yield


@pytest.fixture(autouse=True, scope='session')
def _temp_files_inside_pytest_basetemp(tmp_path_factory):
    """Points `tempfile` (and child processes, through TMPDIR) into pytest's own temp folder.

    Every `tfds.builder()` leaves an empty `tmp*tfds` folder in the system temp dir
    (`DatasetInfo.initialize_from_bucket`); a suite run makes over a thousand. Inside pytest's
    basetemp they go with the rest when pytest prunes old runs.
    """
    import tempfile  # pylint: disable=import-outside-toplevel
    folder = str(tmp_path_factory.mktemp('tempfile'))
    saved_env, saved_dir = os.environ.get('TMPDIR'), tempfile.tempdir
    os.environ['TMPDIR'], tempfile.tempdir = folder, folder
    yield
    tempfile.tempdir = saved_dir
    if saved_env is None:
        os.environ.pop('TMPDIR', None)
    else:
        os.environ['TMPDIR'] = saved_env
