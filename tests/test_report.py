"""Tests for simclr_mura.study.report on a tiny finished grid made of real runs.

The grid: the session's tiny pretraining (train, pretrain mode, eval on validation) and linear
evaluation (train_1pct, eval on test) and the DenseNet-169 baseline (train_1pct, 32 px, 7 steps,
eval on test) from tests/tiny_runs.py, copied into one model root. The tests that read it are
marked slow: they need all three trained runs.
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
from simclr_mura.study import probe_table
from simclr_mura.study import report

PART_FIGURES = ('label_efficiency', 'roc', 'confusion', 'training', 'gallery')
RESAMPLES = 200


@pytest.fixture(scope='module')
def grid(tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp('grid')
    pretrain, _ = tiny_runs.pretrain_dir(base)
    finetune, _, _ = tiny_runs.finetune_dir(base)
    baseline = tiny_runs.baseline_runs(base)['model_dir']
    shutil.copytree(pretrain, root / 'pretrain_elbow')
    shutil.copytree(finetune, root / 'lineareval_1pct_elbow')
    shutil.copytree(baseline, root / 'baseline_1pct_elbow')
    data_dir = tiny_mura.build(os.path.join(base, 'tiny_mura'))
    out = tmp_path_factory.mktemp('report')
    table = report.write_report(str(root), str(out), num_resamples=RESAMPLES)
    return dict(root=root, out=out, table=table, data_dir=data_dir)


def test_method_names():
    assert report.method_name({'train_mode': 'baseline'}) == 'DenseNet-169 baseline'
    assert report.method_name({'train_mode': 'pretrain'}) == 'SimCLR pretrain (linear-eval head)'
    assert report.method_name({'train_mode': 'finetune', 'fine_tune_after_block': 4}) == 'SimCLR linear eval'
    assert report.method_name({'train_mode': 'finetune', 'fine_tune_after_block': -1,
                               'checkpoint': 'runs/pretrain'}) == 'SimCLR fine-tune'
    # --allow_random_init without --checkpoint: the ablation row.
    assert report.method_name({'train_mode': 'finetune', 'fine_tune_after_block': -1,
                               'checkpoint': None, 'allow_random_init': True}) == 'Random-init fine-tune'


def test_micle_runs_are_named_from_their_pretraining(tmp_path):
    micle = {'train_mode': 'pretrain', 'positive_pairs': 'study_views'}
    assert report.method_name(micle) == 'MICLe SimCLR pretrain (linear-eval head)'
    # A fine-tune finds its pretraining's flags.json where --checkpoint pointed, or (runs copied
    # from elsewhere) under the same run name below the report's model_root.
    (tmp_path / 'pretrain_micle_elbow').mkdir()
    (tmp_path / 'pretrain_micle_elbow' / 'flags.json').write_text(json.dumps(micle))
    for checkpoint in (str(tmp_path / 'pretrain_micle_elbow'), '/elsewhere/pretrain_micle_elbow/ckpt-120'):
        source = report.pretraining_settings(checkpoint, str(tmp_path))
        assert source == micle
        linear = {'train_mode': 'finetune', 'fine_tune_after_block': 4, 'checkpoint': checkpoint}
        assert report.method_name(linear, source) == 'MICLe SimCLR linear eval'
        tuned = dict(linear, fine_tune_after_block=-1)
        assert report.method_name(tuned, source) == 'MICLe SimCLR fine-tune'
    plain = {'train_mode': 'pretrain', 'positive_pairs': 'augment'}
    assert report.method_name({'train_mode': 'finetune', 'checkpoint': 'x'}, plain) == 'SimCLR fine-tune'
    assert report.pretraining_settings('/elsewhere/other_run/ckpt-1', str(tmp_path)) is None


def test_seed_numbers_follow_the_seed_report():
    assert report.seed_numbers('elbow', 'DenseNet-169 baseline', 100) == (0.822, 0.506, 0.333)
    assert report.seed_numbers('elbow', 'DenseNet-169 baseline', 10) is None
    assert report.seed_numbers('hand', 'SimCLR fine-tune', 10) == (0.617, 0.582, 0.243)
    assert report.seed_numbers('shoulder', 'SimCLR linear eval', 1) == (0.525, 0.514, 0.708)
    assert report.seed_numbers('wrist', 'SimCLR fine-tune', 1) is None


@pytest.mark.slow
def test_every_file_is_written(grid):
    out = grid['out']
    for name in ('results.csv', 'results.md', 'index.html', 'section_results.html'):
        assert (out / name).stat().st_size > 0, name
    for kind in PART_FIGURES:
        png = out / 'figures' / f'{kind}_elbow.png'
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', png
    assert sorted(p.name for p in out.iterdir() if p.name.startswith('.')) == []  # no temp files


@pytest.mark.slow
def test_table_has_one_row_per_run_in_order(grid):
    table = pd.read_csv(grid['out'] / 'results.csv')
    assert list(table['run']) == ['baseline_1pct_elbow', 'lineareval_1pct_elbow', 'pretrain_elbow']
    assert list(table['method']) == ['DenseNet-169 baseline', 'SimCLR linear eval',
                                     'SimCLR pretrain (linear-eval head)']
    assert list(table['label %']) == [1, 1, 100]
    assert set(table['part']) == {'elbow'}
    builder = tfds.builder(tiny_mura.DATASET, data_dir=grid['data_dir'])
    assert list(table['n train images']) == [builder.info.splits[s].num_examples
                                             for s in ('train_1pct', 'train_1pct', 'train')]
    assert list(table['paper kappa']) == [0.710] * 3
    # The seed's "Finetune 1pct" was linear evaluation; the seed has no 1% baseline, and pretraining
    # no row (the seed's 100% baseline row is checked in test_seed_numbers_follow_the_seed_report).
    assert list(table.loc[1, ['seed accuracy', 'seed precision', 'seed recall']]) == [0.475, 0.460, 0.356]
    assert math.isnan(table.loc[0, 'seed accuracy']) and math.isnan(table.loc[2, 'seed accuracy'])
    markdown = (grid['out'] / 'results.md').read_text()
    assert markdown.count('| elbow | DenseNet-169 baseline | 1% |') == 2  # study and image tables
    assert '0.47/0.46/0.36' in markdown
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_training_curves_come_from_the_summaries(grid):
    runs = {r.name: r for r in report.find_runs(str(grid['root']))}
    series = report.training_series(runs['pretrain_elbow'])
    steps, losses = series['loss']
    assert list(steps) == [2, 4]  # one summary per checkpoint loop of the 4-step run
    assert np.isfinite(losses).all()
    # Pretraining shows the contrastive loss and accuracy against their chance levels (batch 8).
    assert set(series) == {'loss', 'accuracy', 'learning rate', 'loss chance', 'accuracy chance'}
    assert series['loss chance'][1] == pytest.approx([2 * math.log(15)] * 2)
    assert series['accuracy chance'][1] == pytest.approx([1 / 8] * 2)
    baseline_steps, baseline_lr = report.training_series(runs['baseline_1pct_elbow'])['learning rate']
    assert list(baseline_steps) == [2, 3, 4, 6, 7]  # loops end at checkpoints and epoch ends
    assert baseline_lr[0] == pytest.approx(1e-3)


@pytest.mark.slow
def test_gallery_is_skipped_with_a_note_when_the_data_is_missing(grid, tmp_path):
    report.write_report(str(grid['root']), str(tmp_path), data_dir=str(tmp_path / 'no_data'),
                        num_resamples=20)
    assert not (tmp_path / 'figures' / 'gallery_elbow.png').exists()
    assert (tmp_path / 'figures' / 'roc_elbow.png').exists()
    page = (tmp_path / 'index.html').read_text()
    assert 'Gallery skipped' in page and 'Pass --data_dir' in page
    for reference in _references(page):
        assert (tmp_path / reference).is_file(), reference


@pytest.mark.slow
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


def test_seed_summary_pools_runs_of_one_row():
    table = pd.DataFrame({'part': ['elbow'] * 4, 'method': ['SimCLR fine-tune'] * 3 + ['x'],
                          'label %': [10.0] * 4, 'run': ['a', 'b', 'c', 'd'],
                          'study AUROC': [0.6, 0.7, 0.8, 0.5], 'study kappa': [0.1, 0.2, 0.3, 0.0]})
    summary = report.seed_summary(table)
    first = summary.iloc[0]
    assert first['runs'] == 3 and first['study AUROC mean'] == pytest.approx(0.7)
    assert first['study AUROC sd'] == pytest.approx(0.1)
    rows = report.seed_rows(table)
    assert rows[1][3:] == ['3', '0.700 ± 0.100', '0.200 ± 0.100'] and rows[2][3:] == ['1', '0.500', '0.000']


def test_probe_rows_show_pretrained_against_random_encoders():
    probe = {'dataset': 'mura/elbow/1.1.0', 'rows': [
        {'encoder': 'pretrained', 'seed': None, 'train_split': 'train_1pct', 'study_auroc': 0.8,
         'study_auroc_ci': [0.7, 0.9], 'num_train_images': 21},
        {'encoder': 'random', 'seed': 0, 'train_split': 'train_1pct', 'study_auroc': 0.5,
         'study_auroc_ci': [0.4, 0.6], 'num_train_images': 21},
        {'encoder': 'random', 'seed': 1, 'train_split': 'train_1pct', 'study_auroc': 0.6,
         'study_auroc_ci': [0.5, 0.7], 'num_train_images': 21}]}
    rows = probe_table.probe_rows([probe])
    assert rows[1] == ['mura/elbow/1.1.0', '?', '1%', '21', '0.800 [0.70, 0.90]', '0.550 ± 0.071 (2)',
                       '+0.250']
    probe['checkpoint'] = '/runs/pretrain_micle_elbow/ckpt-120'
    assert probe_table.probe_rows([probe])[1][1] == 'pretrain_micle_elbow'
    text = report.to_markdown(pd.DataFrame(), probes=[probe])
    assert 'Frozen-feature probe' in text and '+0.250' in text
