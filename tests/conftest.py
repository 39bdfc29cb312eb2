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
