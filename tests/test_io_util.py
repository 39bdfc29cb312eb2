"""Tests for simclr_mura.io_util: atomic writes and JSON without NaN."""
import json
import math
import os

import numpy as np

from simclr_mura import io_util


def test_atomic_text_write_replaces_and_leaves_no_temporary_files(tmp_path):
    path = str(tmp_path / 'sub' / 'result.json')
    io_util.write_text_atomic(path, 'first')
    io_util.write_text_atomic(path, 'second')
    with open(path) as f:
        assert f.read() == 'second'
    assert os.listdir(tmp_path / 'sub') == ['result.json']


def test_json_nan_becomes_null_and_numpy_scalars_numbers(tmp_path):
    path = str(tmp_path / 'r.json')
    io_util.write_json_atomic(path, {'a': math.nan, 'b': np.float32(0.5), 'c': [np.int64(3), math.inf],
                                     'd': {'e': 'x'}})
    with open(path) as f:
        text = f.read()
    assert 'NaN' not in text and 'Infinity' not in text
    assert json.loads(text) == {'a': None, 'b': 0.5, 'c': [3, None], 'd': {'e': 'x'}}
