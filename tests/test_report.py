"""Tests for simclr_mura.report: method names and row order of the results table."""
import json
import os

from simclr_mura import report


def _write_run(root, name, settings, accuracy):
    os.makedirs(root / name)
    (root / name / 'flags.json').write_text(json.dumps(settings))
    (root / name / 'result.json').write_text(json.dumps({
        'eval_split': 'test', 'global_step': 10, 'eval/image/overall/accuracy': accuracy,
        'eval/study/overall/kappa': None}))


def test_method_names():
    assert report.method_name({'train_mode': 'baseline'}) == 'DenseNet-169 baseline'
    assert report.method_name({'train_mode': 'pretrain'}) == 'SimCLR pretrain (linear-eval head)'
    assert report.method_name({'train_mode': 'finetune', 'fine_tune_after_block': 4}) == 'SimCLR linear eval'
    assert report.method_name({'train_mode': 'finetune', 'fine_tune_after_block': -1}) == 'SimCLR fine-tune'


def test_baseline_and_simclr_rows_side_by_side_per_label_fraction(tmp_path):
    runs = [('a_finetune_100', 'finetune', 'train', 0.6), ('b_baseline_1', 'baseline', 'train_1pct', 0.5),
            ('c_pretrain', 'pretrain', 'train', 0.55), ('d_finetune_1', 'finetune', 'train_1pct', 0.52),
            ('e_baseline_100', 'baseline', 'train', 0.7)]
    for name, mode, split, accuracy in runs:
        _write_run(tmp_path, name, {'train_mode': mode, 'train_split': split, 'dataset': 'mura/all',
                                    'fine_tune_after_block': -1}, accuracy)
    table = report.collect(str(tmp_path))
    assert list(table['run']) == ['b_baseline_1', 'd_finetune_1', 'e_baseline_100', 'a_finetune_100',
                                  'c_pretrain']
    assert list(table['method'][:2]) == ['DenseNet-169 baseline', 'SimCLR fine-tune']
    assert list(table['image acc']) == [0.5, 0.52, 0.7, 0.6, 0.55]
    markdown = report.to_markdown(table)
    assert '| b_baseline_1 | DenseNet-169 baseline | mura/all | train_1pct | test | 10 | 0.500 |' in markdown
    assert markdown.splitlines()[2].endswith('| - |')  # undefined study kappa
