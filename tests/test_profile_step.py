"""Runs benchmarks/profile_step.py on a tiny setting in a subprocess (no timing assertions)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'profile_step.py')
PARTS = ['keras_floor', 'floor_forward', 'floor_grads', 'port_step', 'port_grads', 'port_forward',
         'port_apply', 'blur', 'port_backbone_grads']


@pytest.mark.slow
def test_tiny_profile_times_every_part_against_the_floor(tmp_path):
    out = tmp_path / 'profile.json'
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, SCRIPT, '--depth', '18', '--image_size', '32',
                           '--batch', '1', '--steps', '1', '--warmup', '1', '--json', str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())['results']
    assert list(results) == PARTS
    for name in PARTS:
        row = results[name]
        assert 'error' not in row, (name, row)
        assert len(row['times_s']) == len(row['cpu_times_s']) == 1
        assert row['images_per_step'] == 2 and row['ratio_to_floor'] > 0
        assert name in proc.stdout
    assert results['keras_floor']['ratio_to_floor'] == 1.0
