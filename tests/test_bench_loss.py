"""Runs benchmarks/bench_loss.py on tiny batches in a subprocess (no timing assertions)."""
import json

import numpy as np

import benchmark_script


def _run(args):
    return benchmark_script.run('bench_loss.py', args)


def test_tiny_run_prints_table_and_writes_consistent_json(tmp_path):
    out = tmp_path / 'loss.json'
    proc = _run(['--batches', '512,16,256', '--reps', '2', '--dim', '8', '--json', str(out)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'where the loss alone fills an accelerator' in proc.stdout
    result = json.loads(out.read_text())
    rows = result['results']
    assert [r['batch'] for r in rows] == [16, 256, 512]  # sorted
    for r in rows:
        assert len(r['times_s']) == 2
        assert np.isclose(r['median_s'], np.median(r['times_s']), rtol=1e-3, atol=1e-5)
        assert r['logits_bytes'] == 16 * r['batch']**2
    # 2 x (512 x 1024) float32 logits plus their gradients are 8 MiB; the allocator must have
    # held at least the logits of one direction at once.
    assert rows[-1]['measured_peak_bytes'] >= 512 * 1024 * 4
    limits = result['memory_limits']
    per_n2 = max(r['measured_peak_bytes'] / r['batch']**2 for r in rows[-2:])
    assert np.isclose(limits['measured_bytes_per_n2'], per_n2)
    gb16 = limits['accelerators']['16 GB']
    assert gb16['max_batch_logits_and_grad_only'] == int(np.sqrt(16e9 / 32))
    assert gb16['max_batch_measured_constant'] == int(np.sqrt(16e9 / per_n2))
    assert limits['accelerators']['80 GB']['max_batch_measured_constant'] > \
        gb16['max_batch_measured_constant']


def test_bad_arguments_are_rejected():
    proc = _run(['--batches', '64,x'])
    assert proc.returncode == 2
    assert "--batches='64,x' must be comma-separated integers" in proc.stderr
    proc = _run(['--batches', '1,64', '--reps', '0'])
    assert proc.returncode == 2
    assert 'must all be >= 2' in proc.stderr and '--reps=0' in proc.stderr
