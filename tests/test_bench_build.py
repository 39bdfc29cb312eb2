"""Runs benchmarks/bench_build.py on a tiny synthetic tree in a subprocess (no timing assertions)."""
import json
import os

import pytest

import benchmark_script
from tfds_mura import synthetic


def _run(args):
    return benchmark_script.run('bench_build.py', args)


def test_tiny_run_builds_with_both_writers_and_writes_consistent_json(tmp_path):
    manual = tmp_path / 'manual'
    summary = synthetic.write_synthetic_mura(str(manual), scale=0.005, parts=('elbow', 'hand'), seed=4,
                                             workers=1, rgb_fraction=0.1)
    out = tmp_path / 'bench.json'
    proc = _run(['--manual_dir', str(manual), '--workdir', str(tmp_path / 'work'), '--json', str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'same files from both writers' in proc.stdout and 'copy floor' in proc.stdout
    result = json.loads(out.read_text())
    assert result['images'] == summary.num_images
    assert result['examples_written'] == sum(result['splits'].values()) > result['images']  # fractions overlap train
    assert result['tfds_writer']['same_files_as_mura_writer'] is True
    assert result['ratio_vs_read_floor'] == pytest.approx(
        result['build_seconds'] / result['read_floor_seconds'], rel=0.05, abs=0.05)
    assert result['ratio_vs_copy_floor'] == pytest.approx(
        result['build_seconds'] / result['copy_floor_seconds'], rel=0.05, abs=0.05)
    assert not os.path.exists(tmp_path / 'work' / 'data' / 'copy_floor.bin')


def test_manual_dir_without_mura_is_rejected(tmp_path):
    proc = _run(['--manual_dir', str(tmp_path)])
    assert proc.returncode == 2
    assert 'holds no MURA-v1.1/train_image_paths.csv' in proc.stderr
