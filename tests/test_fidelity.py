"""Tests for simclr_mura.fidelity: the CLI on the official fixtures, tampered and unreadable
files, and the per-file checkers on configurations the repository's fixtures do not hold."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from simclr_mura.fidelity import checks as fidelity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL = os.path.join(REPO, 'tests', 'fixtures', 'official')
SUMMARY = re.compile(r'^(\d+) passed, (\d+) failed$')


def _cli(fixture_dir):
    proc = subprocess.run([sys.executable, '-m', 'simclr_mura.fidelity', str(fixture_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, lines, proc.stderr


def _npz_copy(name, tmp_path, **changes):
    with np.load(os.path.join(OFFICIAL, name)) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


# ------------------------------------------------------------------------------ CLI

def test_cli_passes_on_official_fixtures():
    code, lines, stderr = _cli(OFFICIAL)
    summary = SUMMARY.match(lines[-1])
    assert summary, (lines[-5:], stderr[-2000:])
    assert summary.group(2) == '0', [line for line in lines if 'FAIL' in line or 'ERROR' in line]
    assert code == 0
    # Every fixture file was checked, including the delegated model files.
    for name in ('contrastive_loss.npz', 'lars.npz', 'lr_schedule.csv', 'train_steps.csv',
                 'augment_deterministic.npz', 'forward.npz', 'ckpt_manifest_r18_train.txt'):
        assert any(line.startswith(name) for line in lines), name


def test_cli_reports_tampered_value_and_unreadable_file(tmp_path):
    # One subprocess for both cases keeps the suite fast (each start imports TensorFlow).
    with np.load(os.path.join(OFFICIAL, 'lars.npz')) as data:
        tampered = data['classic_var0_value_step2'].copy()
    tampered[0, 0, 0, 0] += 1e-3
    _npz_copy('lars.npz', tmp_path, classic_var0_value_step2=tampered)
    (tmp_path / 'contrastive_loss.npz').write_bytes(b'this is not a zip archive')
    shutil.copy(os.path.join(OFFICIAL, 'train_steps.csv'), tmp_path)
    code, lines, _ = _cli(tmp_path)
    failing = [line for line in lines if line.endswith('FAIL')]
    assert len(failing) == 1 and 'classic_var0_value_step2' in failing[0]
    assert re.search(r'\s0\.001\s', failing[0])  # the reported max |diff|
    errors = [line for line in lines if line.startswith('ERROR')]
    assert len(errors) == 1 and 'contrastive_loss.npz' in errors[0]
    # 90 LARS rows (one failed) + 32 train_steps rows; the unreadable file counts as a failure.
    assert lines[-1] == '121 passed, 2 failed'
    assert code == 1


def test_main_rejects_missing_or_empty_directory(tmp_path, capsys):
    assert fidelity.main([str(tmp_path / 'nope')]) == 2
    assert 'not a directory' in capsys.readouterr().err
    assert fidelity.main([str(tmp_path)]) == 2
    assert 'no fixture files' in capsys.readouterr().err


# ------------------------------------------------------------------ checker functions

def test_checkers_pass_on_official_files_with_every_array_compared():
    counts = {
        'contrastive_loss.npz': (fidelity.check_contrastive_loss, 2 * 5 + 2 * 5 + 3),
        'lars.npz': (fidelity.check_lars, 3 * 3 * 5 * 2),
        'lr_schedule.csv': (fidelity.check_lr_schedule, 5 * 3),
        'train_steps.csv': (fidelity.check_train_steps, 8 * 4),
        'augment_deterministic.npz': (fidelity.check_augment, 3 * (1 + 3 * 3 + 1) + 2 * 3),
    }
    for name, (checker, expected_rows) in counts.items():
        rows = checker(os.path.join(OFFICIAL, name))
        assert len(rows) == expected_rows, name
        assert all(row.passed for row in rows), [row for row in rows if not row.passed]


def test_simulated_gather_matches_official_two_replica_case():
    rows = fidelity.check_contrastive_loss(os.path.join(OFFICIAL, 'contrastive_loss.npz'),
                                           simulate=True)
    simulated = [row for row in rows if 'simulated gather' in row.name]
    assert len(simulated) == 13
    assert all(row.passed for row in rows)


def _reference_case(hiddens, hidden_norm, temperature):
    """Float64 NumPy NT-Xent per replica (vectorised), for configurations without fixtures."""
    views = []
    for h in hiddens:
        h = np.asarray(h, np.float64)
        if hidden_norm:
            h = h / np.linalg.norm(h, axis=1, keepdims=True)
        views.append(np.split(h, 2))
    all1 = np.concatenate([v[0] for v in views])
    all2 = np.concatenate([v[1] for v in views])
    n = len(all1)
    out = {}
    for r, (h1, h2) in enumerate(views):
        b = len(h1)
        ids = np.arange(b) + r * b
        labels = np.eye(2 * n)[ids]
        mask = np.eye(n)[ids] * 1e9
        loss = 0.0
        for anchor, same, other in ((h1, all1, all2), (h2, all2, all1)):
            logits = np.concatenate([anchor @ other.T / temperature,
                                     anchor @ same.T / temperature - mask], 1)
            logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
            loss = loss + (logz - logits[np.arange(b), ids])
        out[r] = dict(loss=np.float32(loss.mean()), labels=labels.astype(np.float32),
                      logits_ab=(h1 @ all2.T / temperature).astype(np.float32))
    return out


@pytest.mark.parametrize('replicas', (2, 3))
def test_contrastive_checker_reads_any_replica_count(tmp_path, replicas):
    rng = np.random.default_rng(replicas)
    hiddens = [rng.normal(size=(4, 5)).astype(np.float32) for _ in range(replicas)]
    ref = _reference_case(hiddens, True, 0.3)
    arrays = {'case_z_temperature': np.float32(0.3), 'case_z_hidden_norm': np.bool_(True),
              'case_z_num_replicas': np.int32(replicas),
              'case_z_metric_contrast_loss': np.float32(np.mean([v['loss'] for v in ref.values()]))}
    for r in range(replicas):
        arrays[f'case_z_replica{r}_hidden'] = hiddens[r]
        for k, v in ref[r].items():
            arrays[f'case_z_replica{r}_{k}'] = v
    np.savez(tmp_path / 'contrastive_loss.npz', **arrays)
    rows = fidelity.check_contrastive_loss(str(tmp_path / 'contrastive_loss.npz'))
    assert len(rows) == 3 * replicas + 1
    assert all(row.passed for row in rows), rows
    # Two logical CPUs exist in the test session: 3 replicas fall back to the simulation.
    assert ('simulated gather' in rows[0].name) == (replicas == 3)
    arrays['case_z_replica1_loss'] = arrays['case_z_replica1_loss'] + np.float32(0.01)
    np.savez(tmp_path / 'contrastive_loss.npz', **arrays)
    failed = [row.name for row in fidelity.check_contrastive_loss(
        str(tmp_path / 'contrastive_loss.npz')) if not row.passed]
    assert len(failed) == 1 and 'replica1' in failed[0] and failed[0].endswith('loss')


def test_train_steps_checker_flags_a_wrong_count(tmp_path):
    with open(os.path.join(OFFICIAL, 'train_steps.csv')) as f:
        lines = f.read().splitlines()
    fields = lines[3].split(',')
    fields[-3] = str(int(fields[-3]) + 1)  # epoch_steps of the third data line
    lines[3] = ','.join(fields)
    (tmp_path / 'train_steps.csv').write_text('\n'.join(lines) + '\n')
    rows = fidelity.check_train_steps(str(tmp_path / 'train_steps.csv'))
    failed = [row for row in rows if not row.passed]
    assert [row.name for row in failed] == ['train_steps.csv line 4 epoch_steps']
    assert failed[0].max_abs_diff == 1


def test_compare_handles_shape_mismatch_and_nan():
    assert not fidelity.compare('x', np.zeros(3), np.zeros(4)).passed
    assert not fidelity.compare('x', np.array([np.nan]), np.array([1.0]), atol=1).passed
    row = fidelity.compare('x', np.array([1.0, 2.0]), np.array([1.0, 2.00001]), atol=0, rtol=1e-5)
    assert row.passed and row.max_abs_diff == pytest.approx(1e-5)
