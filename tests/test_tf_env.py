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


# Lines as TensorFlow 2.21 writes them while it loads, before absl::InitializeLog().
_START_UP = (
    'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n'
    'I0000 00:00:1796677078.718766   11322 port.cc:153] oneDNN custom operations are on.\n'
    'I0000 00:00:1796677078.719061   11322 cudart_stub.cc:31] Could not find cuda drivers.\n'
    'W0000 00:00:1796677078.719061   11322 gpu_device.cc:2342] Cannot dlopen some GPU libraries.\n'
    'E0000 00:00:1796677317.456063    1920 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n'
    'F1207 20:58:03.803655 140263689137024 op_kernel.cc:1] Check failed\n'
    'Traceback (most recent call last):\n'
    'I0000 is not a log line\n')


def test_start_up_filter_drops_absl_lines_below_the_level_and_keeps_the_rest():
    lines = _START_UP.splitlines(keepends=True)
    assert tf_env.filter_start_up_lines(_START_UP, '0') == _START_UP
    assert tf_env.filter_start_up_lines(_START_UP, 'not a number') == _START_UP
    assert tf_env.filter_start_up_lines(_START_UP, '1') == ''.join([lines[0]] + lines[3:])
    assert tf_env.filter_start_up_lines(_START_UP, '2') == ''.join(lines[4:])
    assert tf_env.filter_start_up_lines(_START_UP, '3') == ''.join(lines[5:])


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


@pytest.mark.parametrize('module', ['simclr_mura.probe', 'simclr_mura.study.report'])
def test_package_commands_start_without_failure_like_lines(module):
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    proc = subprocess.run([sys.executable, '-m', module, '--help'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert 'Try --helpfull' in proc.stdout, proc.stderr  # absl's usage text (it exits with 1)
    assert not [line for line in proc.stderr.splitlines() if 'oneDNN' in line or 'cuda' in line], \
        proc.stderr
