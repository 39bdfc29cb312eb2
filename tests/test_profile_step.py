"""Runs benchmarks/profile_step.py on a tiny setting in a subprocess (no timing assertions)."""
import json

import pytest

import benchmark_script

PARTS = ['keras_floor', 'floor_forward', 'floor_grads', 'port_step', 'port_grads', 'port_forward',
         'port_apply', 'blur', 'port_backbone_grads']


@pytest.mark.slow
def test_tiny_profile_times_every_part_against_the_floor(tmp_path):
    out = tmp_path / 'profile.json'
    proc = benchmark_script.run('profile_step.py', ['--depth', '18', '--image_size', '32', '--batch', '1',
                                                    '--steps', '1', '--warmup', '1', '--json', out])
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
