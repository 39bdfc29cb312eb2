"""Atomic file writes through tf.io.gfile (local paths and cloud storage alike).

A file is written to a temporary name in the same directory and then renamed over the target, so a
killed run leaves either the old file or the complete new one, never half a file.
"""
import json
import math
import os
import uuid
from typing import Any

import tensorflow as tf


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (temporary file, then rename)."""
    _write_atomic(path, text, 'w')


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` atomically (temporary file, then rename)."""
    _write_atomic(path, data, 'wb')


def _write_atomic(path: str, content, mode: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    tmp = os.path.join(directory, f'.{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}')
    try:
        with tf.io.gfile.GFile(tmp, mode) as f:
            f.write(content)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN); numpy scalars -> Python numbers; recursive."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, 'item') and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON, with NaN and infinities as null."""
    write_text_atomic(path, json.dumps(_json_safe(obj), indent=2, sort_keys=True) + '\n')
