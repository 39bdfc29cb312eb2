"""Quiet TensorFlow C++ start-up logs; run.py and the package's commands import tensorflow here.

At start TensorFlow's C++ side logs notices that read like failures on a CPU machine: oneDNN and
CPU-feature notices (INFO) and, without an NVIDIA driver, `E0000 ... failed call to cuInit` (an
ERROR about a GPU that is not there). `TF_CPP_MIN_LOG_LEVEL` filters them: 2 drops INFO and
WARNING, 3 also ERROR. The default here is 2, or 3 when no NVIDIA driver is loaded (the only
start-up ERROR is then the cuInit one; a TensorFlow error that stops a run still arrives as a
Python exception with its message). A value already in the environment is kept, so
`TF_CPP_MIN_LOG_LEVEL=0 python run.py ...` shows everything.

TensorFlow 2.21 logs through absl, and what its libraries log while they load, before
`absl::InitializeLog()` runs, reaches stderr whatever `TF_CPP_MIN_LOG_LEVEL` says (the oneDNN and
"Could not find cuda drivers" INFO lines). `import_tensorflow` therefore imports it with stderr
sent to a temporary file and writes back every line but the absl lines below the level in effect,
so the variable means the same on 2.20 and 2.21. This module imports tensorflow only there.
"""
import importlib
import os
import re
import sys
import tempfile
from typing import MutableMapping

LOG_LEVEL_VARIABLE = 'TF_CPP_MIN_LOG_LEVEL'
_NVIDIA_DRIVER = os.path.join(os.sep, 'proc', 'driver', 'nvidia', 'version')  # Linux's driver file
# absl's prefix: severity letter, MMDD, time (before InitializeLog its seconds are epoch
# seconds: `I0000 00:00:1796677385.994426`), thread id, file:line].
_ABSL_LINE = re.compile(r'([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ')
_ABSL_SEVERITY = {'I': 0, 'W': 1, 'E': 2, 'F': 3}
_BEFORE_INITIALIZE_LOG = 'WARNING: All log messages before absl::InitializeLog() is called'


def default_log_level(nvidia_driver_loaded: bool) -> str:
    return '2' if nvidia_driver_loaded else '3'


def quiet_tensorflow_logs(environ: MutableMapping[str, str] = os.environ) -> str:
    """Sets `TF_CPP_MIN_LOG_LEVEL` unless it is set; returns the value in effect."""
    return environ.setdefault(LOG_LEVEL_VARIABLE,
                              default_log_level(os.path.exists(_NVIDIA_DRIVER)))


def _severity(line: str) -> int | None:
    """absl severity of a C++ log line (0 INFO .. 3 FATAL); None for any other line."""
    if line.startswith(_BEFORE_INITIALIZE_LOG):
        return _ABSL_SEVERITY['W']
    match = _ABSL_LINE.match(line)
    return _ABSL_SEVERITY[match.group(1)] if match else None


def filter_start_up_lines(text: str, min_log_level: str) -> str:
    """`text` without the absl log lines below `min_log_level` (TF_CPP_MIN_LOG_LEVEL's meaning)."""
    try:
        level = int(min_log_level)
    except ValueError:
        level = 0  # TensorFlow reads a value it cannot parse as 0, so nothing is dropped.
    kept = [line for line in text.splitlines(keepends=True)
            if (severity := _severity(line)) is None or severity >= level]
    return ''.join(kept)


def import_tensorflow(environ: MutableMapping[str, str] = os.environ):
    """Sets the quiet default, imports tensorflow and filters what its loading wrote to stderr."""
    level = quiet_tensorflow_logs(environ)
    if 'tensorflow' in sys.modules or level == '0':
        return importlib.import_module('tensorflow')
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    # A file, not a pipe: a pipe that nobody reads while tensorflow loads could fill and block it.
    with tempfile.TemporaryFile(mode='w+b') as captured:
        os.dup2(captured.fileno(), 2)
        try:
            return importlib.import_module('tensorflow')
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            text = captured.read().decode('utf-8', errors='replace')
            os.write(2, filter_start_up_lines(text, level).encode('utf-8'))
