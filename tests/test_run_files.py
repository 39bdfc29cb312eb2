"""Tests for simclr_mura.study.run_files, and that the study reads runs without the training stack."""
import subprocess
import sys

from simclr_mura.study import run_files


def test_predictions_filename_is_file_safe():
    assert run_files.predictions_filename('test', 12) == 'predictions_test_12.csv'
    assert run_files.predictions_filename('train[:50%]', 3) == 'predictions_train_50_3.csv'


def test_result_names():
    assert run_files.RESULT == 'result.json'
    assert run_files.result_at_step(7) == 'result_7.json'


def test_the_study_imports_none_of_the_training_stack():
    training_stack = ['simclr_mura.' + m for m in (
        'train', 'evaluate', 'export', 'main', 'model', 'resnet', 'data', 'data_util', 'objective',
        'recipes', 'densenet', 'checkpoints')]
    code = ('import sys\n'
            'from simclr_mura.study import grid, report, explore, figures, html_page, run_files\n'
            f'print(sorted(m for m in {training_stack!r} if m in sys.modules))\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == '[]'
