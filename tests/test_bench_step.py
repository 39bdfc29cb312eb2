"""Runs benchmarks/bench_step.py on a tiny setting in a subprocess (no timing assertions)."""
import json
import os

import numpy as np

import benchmark_script


def _run(args):
    return benchmark_script.run('bench_step.py', args)


def test_tiny_run_prints_table_and_writes_consistent_json(tmp_path):
    out = tmp_path / 'bench.json'
    proc = _run(['--depth', '18', '--image_size', '32', '--batch', '1', '--steps', '2',
                 '--warmup', '1', '--no_finetune', '--mixed_precision', 'mixed_bfloat16',
                 '--json', str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'port_pretrain' in proc.stdout and 'keras_floor' in proc.stdout
    result = json.loads(out.read_text())
    port, floor = result['results']['port_pretrain'], result['results']['keras_floor']
    assert len(port['times_s']) == len(floor['times_s']) == 2
    assert port['images_per_step'] == floor['images_per_step'] == 2  # one two-view pair
    pairwise = np.array(port['times_s']) / np.array(floor['times_s'])
    assert np.isclose(result['ratio'], np.median(pairwise), rtol=1e-3)
    assert result['ratio_range'] == [port['ratio_to_floor_min'], port['ratio_to_floor_max']]
    assert 'MirroredStrategy' in port['note']
    cpu_pairwise = np.array(port['cpu_times_s']) / np.array(floor['cpu_times_s'])
    assert np.isclose(result['cpu_ratio'], np.median(cpu_pairwise), rtol=1e-3)
    bf16 = result['results']['port_pretrain_mixed_bfloat16']
    assert len(bf16['times_s']) == 2 and bf16['note'].endswith('mixed_bfloat16')
    assert np.isclose(bf16['ratio_to_floor'],
                      np.median(np.array(bf16['times_s']) / np.array(floor['times_s'])), rtol=1e-3)
    assert result['settings']['mixed_precision'] == ['mixed_bfloat16']
    assert result['machine']['cpu_count'] == os.cpu_count()
    assert result['machine']['tensorflow']


def test_grey_views_feed_the_port_one_channel_per_view(tmp_path):
    out = tmp_path / 'bench.json'
    proc = _run(['--depth', '18', '--image_size', '32', '--batch', '1', '--steps', '1',
                 '--warmup', '1', '--grey_views', '--json', str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result['settings']['grey_views'] is True
    for name in ('port_pretrain', 'port_finetune'):
        assert result['results'][name]['note'].endswith('grey views')
        assert len(result['results'][name]['times_s']) == 1
    assert 'grey' not in result['results']['keras_floor']['note']
    proc = _run(['--baseline', '--grey_views'])
    assert proc.returncode == 2 and '--grey_views is for the SimCLR step' in proc.stderr


def test_bad_arguments_are_rejected_before_any_model_is_built():
    proc = _run(['--depth', '200', '--steps', '0'])
    assert proc.returncode == 2
    assert '--steps=0 must be >= 1' in proc.stderr
    assert '--depth=200 has no Keras floor' in proc.stderr


def test_baseline_mode_arguments():
    proc = _run(['--baseline', '--jit_compile', '--steps', '0'])
    assert proc.returncode == 2
    assert '--steps=0 must be >= 1' in proc.stderr
    assert '--baseline times the DenseNet-169 baseline without XLA' in proc.stderr
    proc = _run(['--baseline', '--mixed_precision', 'mixed_float16'])
    assert proc.returncode == 2
    assert 'leave out --jit_compile, --width and --mixed_precision' in proc.stderr
    proc = _run(['--mixed_precision', 'float16'])
    assert proc.returncode == 2 and "invalid choice: 'float16'" in proc.stderr
