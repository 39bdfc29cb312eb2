"""Tests for simclr_mura.study.report on a tiny finished grid made of real runs.

The grid: the session's tiny pretraining (train, pretrain mode, eval on validation) and linear
evaluation (train_1pct, eval on test) from tests/tiny_runs.py, copied into one model root, plus a
DenseNet-169 baseline run made here (train, 32 px, 2 steps, eval on test).
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
from sklearn import metrics as skm

import tiny_mura
import tiny_runs
from simclr_mura import main
from simclr_mura.study import explore
from simclr_mura.study import report

PART_FIGURES = ('label_efficiency', 'roc', 'confusion', 'training', 'gallery')
RESAMPLES = 200


@pytest.fixture(scope='module')
def grid(tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp('grid')
    pretrain, _ = tiny_runs.pretrain_dir(base)
    finetune, _, _ = tiny_runs.finetune_dir(base)
    shutil.copytree(pretrain, root / 'pretrain_elbow')
    shutil.copytree(finetune, root / 'lineareval_1pct_elbow')
    data_dir = tiny_mura.build(os.path.join(base, 'tiny_mura'))
    config = tiny_runs.base_config(
        data_dir, str(root / 'baseline_100pct_elbow'), mode='train_then_eval', train_mode='baseline',
        optimizer='adam', learning_rate=1e-3, weight_decay=0.0, image_size=32, train_batch_size=2,
        eval_batch_size=4, train_split='train', eval_split='test', train_steps=2, checkpoint_steps=2,
        baseline_weights='none')
    main.run(config, strategy=tiny_runs.strategy(1))
    out = tmp_path_factory.mktemp('report')
    table = report.write_report(str(root), str(out), num_resamples=RESAMPLES)
    return dict(root=root, out=out, table=table, data_dir=data_dir)


def test_method_names():
    assert report.method_name({'train_mode': 'baseline'}) == 'DenseNet-169 baseline'
    assert report.method_name({'train_mode': 'pretrain'}) == 'SimCLR pretrain (linear-eval head)'
    assert report.method_name({'train_mode': 'finetune', 'fine_tune_after_block': 4}) == 'SimCLR linear eval'
    assert report.method_name({'train_mode': 'finetune', 'fine_tune_after_block': -1}) == 'SimCLR fine-tune'


def test_seed_numbers_follow_the_seed_report():
    assert report.seed_numbers('elbow', 'DenseNet-169 baseline', 100) == (0.822, 0.506, 0.333)
    assert report.seed_numbers('elbow', 'DenseNet-169 baseline', 10) is None
    assert report.seed_numbers('hand', 'SimCLR fine-tune', 10) == (0.617, 0.582, 0.243)
    assert report.seed_numbers('shoulder', 'SimCLR linear eval', 1) == (0.525, 0.514, 0.708)
    assert report.seed_numbers('wrist', 'SimCLR fine-tune', 1) is None


def test_every_file_is_written(grid):
    out = grid['out']
    for name in ('results.csv', 'results.md', 'index.html', 'section_results.html'):
        assert (out / name).stat().st_size > 0, name
    for kind in PART_FIGURES:
        png = out / 'figures' / f'{kind}_elbow.png'
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', png
    assert sorted(p.name for p in out.iterdir() if p.name.startswith('.')) == []  # no temp files


def test_table_has_one_row_per_run_in_order(grid):
    table = pd.read_csv(grid['out'] / 'results.csv')
    assert list(table['run']) == ['baseline_100pct_elbow', 'lineareval_1pct_elbow', 'pretrain_elbow']
    assert list(table['method']) == ['DenseNet-169 baseline', 'SimCLR linear eval',
                                     'SimCLR pretrain (linear-eval head)']
    assert list(table['label %']) == [100, 1, 100]
    assert set(table['part']) == {'elbow'}
    builder = tfds.builder(tiny_mura.DATASET, data_dir=grid['data_dir'])
    assert list(table['n train images']) == [builder.info.splits[s].num_examples
                                             for s in ('train', 'train_1pct', 'train')]
    assert list(table['paper kappa']) == [0.710] * 3
    assert list(table.loc[0, ['seed accuracy', 'seed precision', 'seed recall']]) == [0.822, 0.506, 0.333]
    # The seed's "Finetune 1pct" was linear evaluation; pretraining has no seed row.
    assert list(table.loc[1, ['seed accuracy', 'seed precision', 'seed recall']]) == [0.475, 0.460, 0.356]
    assert math.isnan(table.loc[2, 'seed accuracy'])
    markdown = (grid['out'] / 'results.md').read_text()
    assert markdown.count('| elbow | DenseNet-169 baseline | 100% |') == 2  # study and image tables
    assert '0.82/0.51/0.33' in markdown
    assert f'({RESAMPLES} resamples, seed 0)' in markdown  # the CIs' caption names the resamples used


def _sklearn_metrics(labels, probabilities):
    predictions = (probabilities > 0.5).astype(int)
    out = {'acc': skm.accuracy_score(labels, predictions),
           'precision': skm.precision_score(labels, predictions, zero_division=np.nan),
           'recall': skm.recall_score(labels, predictions, zero_division=np.nan),
           'F1': skm.f1_score(labels, predictions, zero_division=np.nan),
           'kappa': skm.cohen_kappa_score(labels, predictions, labels=[0, 1])}
    out['AUROC'] = (skm.roc_auc_score(labels, probabilities) if 0 < labels.sum() < len(labels)
                    else math.nan)
    return out


def test_metric_values_equal_sklearn_on_the_predictions_csv(grid):
    table = pd.read_csv(grid['out'] / 'results.csv')
    for row in table.itertuples(index=False):
        result = json.loads((grid['root'] / row.run / 'result.json').read_text())
        name = f'predictions_{result["eval_split"]}_{result["global_step"]}.csv'
        predictions = pd.read_csv(grid['root'] / row.run / name)
        studies = predictions.groupby('study_id').agg(label=('label', 'first'),
                                                      probability=('probability', 'mean'))
        for level, frame in (('image', predictions), ('study', studies)):
            expected = _sklearn_metrics(frame['label'].to_numpy(), frame['probability'].to_numpy())
            for metric, value in expected.items():
                found = table.loc[table['run'] == row.run, f'{level} {metric}'].item()
                if math.isnan(value):
                    assert math.isnan(found), (row.run, level, metric)
                else:
                    assert found == pytest.approx(value, abs=1e-6), (row.run, level, metric)


def test_bootstrap_intervals_contain_the_point_estimates(grid):
    table = grid['table']
    checked = 0
    for _, row in table.iterrows():
        for level in ('study', 'image'):
            for metric in ('kappa', 'AUROC'):
                low, high = row[f'{level} {metric} CI low'], row[f'{level} {metric} CI high']
                if not math.isnan(row[f'{level} {metric}']) and not math.isnan(low):
                    assert low - 1e-9 <= row[f'{level} {metric}'] <= high + 1e-9
                    checked += 1
    assert checked >= 4


def _references(html_text):
    return re.findall(r'(?:src|href)="([^"#][^"]*)"', html_text)


def test_html_page_references_only_existing_files(grid):
    out = grid['out']
    page = (out / 'index.html').read_text()
    references = _references(page)
    assert 'results.csv' in references
    for kind in PART_FIGURES:
        assert f'figures/{kind}_elbow.png' in references
    for reference in references:
        assert not reference.startswith(('/', 'http')), reference  # relative: opens from disk
        assert (out / reference).is_file(), reference
    assert '<table>' in page and 'DenseNet-169 baseline' in page


def test_training_curves_come_from_the_summaries(grid):
    runs = {r.name: r for r in report.find_runs(str(grid['root']))}
    series = report.training_series(runs['pretrain_elbow'])
    steps, losses = series['loss']
    assert list(steps) == [2, 4]  # one summary per checkpoint loop of the 4-step run
    assert np.isfinite(losses).all()
    assert set(series) == {'loss', 'accuracy', 'learning rate'}
    baseline_lr = report.training_series(runs['baseline_100pct_elbow'])['learning rate'][1]
    assert baseline_lr == pytest.approx([1e-3])


def test_gallery_is_skipped_with_a_note_when_the_data_is_missing(grid, tmp_path):
    report.write_report(str(grid['root']), str(tmp_path), data_dir=str(tmp_path / 'no_data'),
                        num_resamples=20)
    assert not (tmp_path / 'figures' / 'gallery_elbow.png').exists()
    assert (tmp_path / 'figures' / 'roc_elbow.png').exists()
    page = (tmp_path / 'index.html').read_text()
    assert 'Gallery skipped' in page and 'Pass --data_dir' in page
    for reference in _references(page):
        assert (tmp_path / reference).is_file(), reference


def test_explore_and_report_share_one_page_in_either_order(grid, tmp_path):
    explore.write_explore(grid['data_dir'], str(tmp_path))
    first = (tmp_path / 'index.html').read_text()
    assert 'id="explore"' in first and 'id="results"' not in first and 'No results section' in first
    report.write_report(str(grid['root']), str(tmp_path), num_resamples=20)
    both = (tmp_path / 'index.html').read_text()
    assert both.index('id="explore"') < both.index('id="results"')
    explore.write_explore(grid['data_dir'], str(tmp_path))  # again, after the report
    assert (tmp_path / 'index.html').read_text() == both
    for reference in _references(both):
        assert (tmp_path / reference).is_file(), reference


def test_cli_rejects_a_missing_model_root(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'simclr_mura.study.report', f'--model_root={tmp_path}/none',
                           f'--out={tmp_path}/out'], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith('report: error')]
    assert len(errors) == 1 and 'is not a directory' in errors[0]
    assert not (tmp_path / 'out').exists()
