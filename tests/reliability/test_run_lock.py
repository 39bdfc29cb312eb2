"""The model_dir run lock: a second run refuses, a dead owner's lock is taken over, exit releases it."""
import json
import os
import socket
import subprocess
import sys

import pytest

import tiny_mura
import tiny_runs
from simclr_mura import main
from simclr_mura import run_lock

pytestmark = pytest.mark.reliability


def _write_lock(model_dir, pid, host=None):
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, run_lock.LOCK_NAME), 'w') as f:
        json.dump({'pid': pid, 'host': host or socket.gethostname(),
                   'started': '2026-01-01T00:00:00+00:00'}, f)


def _dead_pid():
    proc = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def test_lock_records_owner_and_is_released_at_exit(tmp_path):
    model_dir = str(tmp_path / 'run')
    with run_lock.hold(model_dir) as owner:
        on_disk = run_lock.read_lock(model_dir)
        assert on_disk == owner
        assert owner['pid'] == os.getpid() and owner['host'] == socket.gethostname() and owner['started']
        with pytest.raises(run_lock.RunLockedError):
            run_lock.acquire(model_dir)  # The same process, a second time: also refused.
    assert run_lock.read_lock(model_dir) is None
    with pytest.raises(RuntimeError):
        with run_lock.hold(model_dir):
            raise RuntimeError('the run failed')
    assert run_lock.read_lock(model_dir) is None  # Released on failure too.


def test_a_live_owner_refuses_the_second_run_in_one_line(tmp_path):
    model_dir = str(tmp_path / 'run')
    _write_lock(model_dir, os.getppid())  # A live process of this host.
    with pytest.raises(run_lock.RunLockedError) as info:
        run_lock.acquire(model_dir)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f'pid {os.getppid()} on host {socket.gethostname()}' in message
    assert 'use another --model_dir' in message
    assert run_lock.read_lock(model_dir)['pid'] == os.getppid()  # Left as it was.


def test_lock_of_another_host_is_not_taken_over(tmp_path):
    model_dir = str(tmp_path / 'run')
    _write_lock(model_dir, 12345, host='tpu-vm-elsewhere')
    with pytest.raises(run_lock.RunLockedError, match='tpu-vm-elsewhere.*if that run is gone, delete'):
        run_lock.acquire(model_dir)


def test_stale_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path, caplog):
    model_dir = str(tmp_path / 'run')
    dead = _dead_pid()
    _write_lock(model_dir, dead)
    owner = run_lock.acquire(model_dir)
    assert run_lock.read_lock(model_dir) == owner and owner['pid'] == os.getpid()
    assert any('stale lock' in r.getMessage() and str(dead) in r.getMessage() for r in caplog.records)
    run_lock.release(model_dir, owner)


def test_second_training_run_on_a_locked_model_dir_refuses_before_writing(tmp_path_factory, tmp_path):
    data_dir = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    model_dir = str(tmp_path / 'busy')
    _write_lock(model_dir, os.getppid())
    config = tiny_runs.base_config(data_dir, model_dir, train_steps=2)
    with pytest.raises(run_lock.RunLockedError, match='is in use by another run'):
        main.run(config, strategy=tiny_runs.strategy(1))
    assert os.listdir(model_dir) == [run_lock.LOCK_NAME]
