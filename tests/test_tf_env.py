"""Tests for simclr_mura.tf_env: a CPU run of run.py does not open with lines that look like failures."""
import os
import re
import subprocess
import sys

import pytest

import tiny_mura
from simclr_mura import tf_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_level_hides_the_cuinit_error_only_without_a_driver():
    assert tf_env.default_log_level(nvidia_driver_loaded=False) == '3'
    assert tf_env.default_log_level(nvidia_driver_loaded=True) == '2'
    environ = {}
    assert tf_env.quiet_tensorflow_logs(environ) in ('2', '3')
    assert environ[tf_env.LOG_LEVEL_VARIABLE] in ('2', '3')


def test_a_level_set_by_the_user_wins():
    environ = {'TF_CPP_MIN_LOG_LEVEL': '0'}
    assert tf_env.quiet_tensorflow_logs(environ) == '0' and environ == {'TF_CPP_MIN_LOG_LEVEL': '0'}


@pytest.mark.slow
def test_cpu_run_of_run_py_has_no_failure_like_startup_lines(tmp_path_factory, tmp_path):
    data_dir = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'run.py'), f'--data_dir={data_dir}',
         f'--dataset={tiny_mura.DATASET}', f'--model_dir={tmp_path / "run"}', '--mode=train',
         '--train_mode=finetune', '--allow_random_init', '--resnet_depth=18', '--image_size=32',
         '--train_batch_size=4', '--train_steps=1', '--warmup_epochs=0'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert not [line for line in lines if 'cuInit' in line or 'oneDNN' in line], proc.stderr
    assert not [line for line in lines if re.match(r'[EF]\d{4} ', line)], proc.stderr  # C++ ERROR/FATAL
    assert not [line for line in lines if 'cpu_feature_guard' in line], proc.stderr
    assert any('Step 1/1: loss ' in line for line in lines)  # the per-loop progress line stays
