"""Runs benchmarks/bench_input.py on the tiny dataset in a subprocess (no timing assertions)."""
import json

import numpy as np
import pytest

import benchmark_script
import tiny_mura

PIPELINES = ('decode_floor', 'train_two_view', 'train_straightforward', 'eval_one_view',
             'eval_straightforward')


def _run(args):
    return benchmark_script.run('bench_input.py', args)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))


def test_tiny_run_prints_table_and_writes_consistent_json(data_dir, tmp_path):
    out = tmp_path / 'bench.json'
    proc = _run(['--data_dir', data_dir, '--dataset', tiny_mura.DATASET, '--image_size', '48',
                 '--batch', '4', '--examples', '8', '--rounds', '2', '--step_depth', '18',
                 '--step_image_size', '32', '--step_batch', '2', '--steps', '1', '--json', str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in PIPELINES:
        assert name in proc.stdout
    result = json.loads(out.read_text())
    rates = result['examples_per_second_rounds']
    assert set(rates) == set(PIPELINES) and all(len(v) == 2 for v in rates.values())
    median = {name: np.median(v) for name, v in rates.items()}
    assert result['ratio_vs_decode_floor'] == pytest.approx(
        median['train_two_view'] / median['decode_floor'], rel=1e-2)
    assert result['ratio_vs_straightforward'] == pytest.approx(
        median['train_two_view'] / median['train_straightforward'], rel=1e-2)
    step = result['step']
    assert len(step['times_s']['real_input']) == len(step['times_s']['fixed_batch']) == 2
    assert step['real_over_fixed'] == pytest.approx(
        step['real_input_median_s'] / step['fixed_batch_median_s'], rel=1e-2)
    assert result['settings']['dataset'] == tiny_mura.DATASET


def test_bad_arguments_are_rejected_before_any_work():
    proc = _run(['--batch', '0', '--steps', '-1', '--step_depth', '7'])
    assert proc.returncode == 2
    assert '--batch=0 must be >= 1' in proc.stderr
    assert '--steps=-1 must be >= 0' in proc.stderr
    assert '--step_depth=7 must be one of' in proc.stderr


def test_missing_dataset_is_one_error_line(tmp_path):
    proc = _run(['--data_dir', str(tmp_path), '--steps', '0'])
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'is not built' in errors[0], proc.stderr
