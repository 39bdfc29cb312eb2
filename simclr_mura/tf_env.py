"""Quiet defaults for TensorFlow's C++ start-up logs; imported by run.py before tensorflow.

At start TensorFlow's C++ side logs notices that read like failures on a CPU machine: oneDNN and
CPU-feature notices (INFO) and, without an NVIDIA driver, `E0000 ... failed call to cuInit` (an
ERROR about a GPU that is not there). `TF_CPP_MIN_LOG_LEVEL` filters them: 2 drops INFO and
WARNING, 3 also ERROR. The default here is 2, or 3 when no NVIDIA driver is loaded (the only
start-up ERROR is then the cuInit one; a TensorFlow error that stops a run still arrives as a
Python exception with its message). A value already in the environment is kept, so
`TF_CPP_MIN_LOG_LEVEL=0 python run.py ...` shows everything. This module must not import tensorflow.
"""
import os
from typing import MutableMapping

LOG_LEVEL_VARIABLE = 'TF_CPP_MIN_LOG_LEVEL'
_NVIDIA_DRIVER = os.path.join(os.sep, 'proc', 'driver', 'nvidia', 'version')  # Linux's driver file


def default_log_level(nvidia_driver_loaded: bool) -> str:
    return '2' if nvidia_driver_loaded else '3'


def quiet_tensorflow_logs(environ: MutableMapping[str, str] = os.environ) -> str:
    """Sets `TF_CPP_MIN_LOG_LEVEL` unless it is set; returns the value in effect."""
    return environ.setdefault(LOG_LEVEL_VARIABLE,
                              default_log_level(os.path.exists(_NVIDIA_DRIVER)))
