"""Two real worker processes on loopback (MultiWorkerMirroredStrategy through TF_CONFIG).

Each test starts `run.py` twice with TF_CONFIG naming two workers on 127.0.0.1 at ports found free
at run time, waits a bounded time and kills both process groups on any failure. The tiny dataset's
train split is ONE file, so the two input pipelines must fall back from file sharding.

The one-process reference is a MirroredStrategy over the 2 logical CPUs of tests/conftest.py with
one input pipeline per replica (InputReplicationMode.PER_REPLICA), so its replica i reads what
worker i reads: same seed, same global batch, same examples, augmentations and blur seeds per
replica. Its losses equal the workers' within LOSS_RTOL (what differs is only where the
all-reduces run and the CPU kernels' threading).
"""
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tiny_mura
import tiny_runs
from simclr_mura import data
from simclr_mura import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_TIMEOUT_S = 420  # Bounded even on a loaded 2-core machine; a healthy pair needs far less.
LOSS_RTOL = 1e-4
LOST_WORKER_TIMEOUT_S = 180  # A lost peer is detected by the coordination service's heartbeats.
PRETRAIN_STEPS = 3
FINETUNE_STEPS = 2
RUN_FLAGS = dict(dataset=tiny_mura.DATASET, resnet_depth=18, image_size=64, train_batch_size=8,
                 eval_batch_size=8, warmup_epochs=0, checkpoint_steps=1, seed=1, eval_split='test',
                 mode='train_then_eval', learning_rate=0.1)
PRETRAIN = dict(train_mode='pretrain', train_steps=PRETRAIN_STEPS)
FINETUNE = dict(train_mode='finetune', train_split='train_1pct', train_steps=FINETUNE_STEPS,
                fine_tune_after_block=4, optimizer='momentum', weight_decay=0.0)

pytestmark = pytest.mark.slow


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Workers:
    """Two `run.py` worker processes of one cluster; `wait` bounds their time, `kill` ends both."""

    def __init__(self, base_dir, flags, count=2):
        ports = _free_ports(count)
        self.logs, self.tmp_dirs, self.procs = [], [], []
        for index in range(count):
            tmp = os.path.join(base_dir, f'tmp_worker{index}')
            os.makedirs(tmp, exist_ok=True)
            env = dict(os.environ, PYTHONPATH=REPO, TMPDIR=tmp, TF_CPP_MIN_LOG_LEVEL='2',
                       CUDA_VISIBLE_DEVICES='',
                       TF_CONFIG=json.dumps({'cluster': {'worker': [f'127.0.0.1:{p}' for p in ports]},
                                             'task': {'type': 'worker', 'index': index}}))
            log = os.path.join(base_dir, f'worker{index}.log')
            with open(log, 'w') as out:
                self.procs.append(subprocess.Popen(
                    ['nice', '-n', '10', sys.executable, os.path.join(REPO, 'run.py')]
                    + [f'--{k}={v}' for k, v in flags.items()],
                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            self.logs.append(log)
            self.tmp_dirs.append(tmp)

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def log(self, index):
        with open(self.logs[index]) as f:
            return f.read()

    def kill(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait()

    def wait(self, timeout=WORKER_TIMEOUT_S):
        """Exit codes of all workers; kills them all if any is still running after `timeout`."""
        deadline = time.time() + timeout
        try:
            return [proc.wait(timeout=max(deadline - time.time(), 0.1)) for proc in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f'workers did not finish in {timeout} s; last log lines:\n'
                        + '\n'.join(self.log(i)[-3000:] for i in range(len(self.procs))))
        finally:
            self.kill()


def _run_workers(base_dir, flags):
    workers = Workers(base_dir, flags)
    start = time.time()
    codes = workers.wait()
    elapsed = time.time() - start
    assert codes == [0, 0], '\n'.join(workers.log(i)[-3000:] for i in range(2))
    return workers, elapsed


class PerReplicaInputMirroredStrategy(tf.distribute.MirroredStrategy):
    """MirroredStrategy building one input pipeline per replica, as one per worker does."""

    def distribute_datasets_from_function(self, dataset_fn, options=None):
        return super().distribute_datasets_from_function(dataset_fn, tf.distribute.InputOptions(
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA))


def _one_process_run(data_dir, model_dir, flags):
    if len(tf.config.list_logical_devices('CPU')) < 2:
        pytest.skip('needs the 2 logical CPUs of tests/conftest.py')
    config = tiny_runs.base_config(data_dir, model_dir, **{
        k: v for k, v in flags.items() if k not in ('data_dir', 'model_dir')})
    tiny_runs.fresh_collective_keys()
    return main.run(config, strategy=PerReplicaInputMirroredStrategy(['/cpu:0', '/cpu:1']))


def _losses(model_dir):
    """train/total_loss by step from the summaries in model_dir."""
    losses = {}
    for path in glob.glob(os.path.join(model_dir, 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == 'train/total_loss':
                    losses[event.step] = float(tf.make_ndarray(value.tensor))
    return losses


def _file_kinds(model_dir):
    """Relative paths in model_dir; event file names (time, host, pid, counter) become "events"."""
    kinds = []
    for root, _, files in os.walk(model_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), model_dir)
            kinds.append(re.sub(r'events\.out\.tfevents\..*\.v2$', 'events', rel))
    return sorted(kinds)


def _check_two_worker_run(builder, workers, model_dir, reference_dir, steps):
    # Exact step count: the last checkpoint and the evaluated step.
    assert tf.train.latest_checkpoint(model_dir).endswith(f'ckpt-{steps}')
    with open(os.path.join(model_dir, 'result.json')) as f:
        assert json.load(f)['global_step'] == steps
    # What a one-process run writes, and nothing more.
    assert _file_kinds(model_dir) == _file_kinds(reference_dir)
    # Nothing from the non-chief worker: every event file is the chief's, and its private
    # checkpoint and export copies are gone.
    chief_pid = workers.pids[0]
    for path in glob.glob(os.path.join(model_dir, '**', 'events.out.tfevents.*'), recursive=True):
        assert f'.{chief_pid}.' in os.path.basename(path)
    assert not glob.glob(os.path.join(workers.tmp_dirs[1], 'simclr_mura_worker_*'))
    # The predictions CSV holds every test image exactly once.
    predictions = pd.read_csv(os.path.join(model_dir, f'predictions_test_{steps}.csv'))
    expected = data.split_index(builder, 'test')['image_id']
    assert sorted(predictions['image_id']) == sorted(expected)
    assert predictions['image_id'].is_unique
    # Both workers computed the same metrics from the gathered predictions.
    accuracy = re.compile(r'Eval at step \d+: image accuracy (\S+), AUROC (\S+)')
    assert accuracy.findall(workers.log(0)) == accuracy.findall(workers.log(1))
    assert 'sharded by examples' in workers.log(0) and 'fewer files than pipelines' in workers.log(0)


def _check_losses(model_dir, reference_dir, steps):
    got, want = _losses(model_dir), _losses(reference_dir)
    assert sorted(got) == sorted(want) == list(range(1, steps + 1))
    print('two workers:', got, 'one process:', want)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                               rtol=LOSS_RTOL)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    path = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    builder = data.make_builder(tiny_mura.DATASET, path)
    assert len(builder.info.splits['train'].file_instructions) == 1  # one train shard
    return path


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, data_dir):
    base = tmp_path_factory.mktemp('multiworker_pretrain')
    flags = dict(RUN_FLAGS, **PRETRAIN, data_dir=data_dir, model_dir=str(base / 'model'))
    workers, elapsed = _run_workers(str(base), flags)
    print(f'two-worker pretraining: {PRETRAIN_STEPS} steps, {elapsed:.1f} s')
    return workers, str(base / 'model'), flags


def test_two_workers_pretrain_evaluate_export(pretrained, data_dir, tmp_path):
    workers, model_dir, flags = pretrained
    reference = str(tmp_path / 'one_process')
    _one_process_run(data_dir, reference, dict(flags, model_dir=reference))
    builder = data.make_builder(tiny_mura.DATASET, data_dir)
    _check_two_worker_run(builder, workers, model_dir, reference, PRETRAIN_STEPS)
    _check_losses(model_dir, reference, PRETRAIN_STEPS)


def test_two_workers_finetune_evaluate_export(pretrained, data_dir, tmp_path):
    _, source, _ = pretrained
    flags = dict(RUN_FLAGS, **FINETUNE, data_dir=data_dir, model_dir=str(tmp_path / 'model'),
                 checkpoint=source)
    workers, elapsed = _run_workers(str(tmp_path), flags)
    print(f'two-worker fine-tuning: {FINETUNE_STEPS} steps, {elapsed:.1f} s')
    reference = str(tmp_path / 'one_process')
    _one_process_run(data_dir, reference, dict(flags, model_dir=reference))
    builder = data.make_builder(tiny_mura.DATASET, data_dir)
    _check_two_worker_run(builder, workers, str(tmp_path / 'model'), reference, FINETUNE_STEPS)
    _check_losses(str(tmp_path / 'model'), reference, FINETUNE_STEPS)


def test_killed_worker_stops_the_other_and_a_restart_resumes(data_dir, tmp_path):
    model_dir = str(tmp_path / 'model')
    flags = dict(RUN_FLAGS, train_mode='pretrain', train_steps=4, mode='train', data_dir=data_dir,
                 model_dir=model_dir)
    os.makedirs(tmp_path / 'first')
    workers = Workers(str(tmp_path / 'first'), flags)
    try:
        deadline = time.time() + WORKER_TIMEOUT_S
        while not (os.path.isdir(model_dir) and tf.train.latest_checkpoint(model_dir)):
            assert time.time() < deadline and all(p.poll() is None for p in workers.procs), \
                workers.log(0)[-3000:]
            time.sleep(0.2)
        os.killpg(workers.pids[1], signal.SIGKILL)  # The non-chief worker dies mid-run.
        killed = time.time()
        code = workers.procs[0].wait(timeout=LOST_WORKER_TIMEOUT_S)
        print(f'the chief stopped {time.time() - killed:.1f} s after the other worker was killed')
    finally:
        workers.kill()
    assert code == 1
    errors = [line for line in workers.log(0).splitlines() if line.startswith('run.py: error:')]
    assert len(errors) == 1 and 'lost contact with another worker' in errors[0], workers.log(0)[-3000:]
    newest = int(tf.train.latest_checkpoint(model_dir).rsplit('-', 1)[1])
    assert 1 <= newest < 4 and not os.path.exists(os.path.join(model_dir, 'run.lock'))
    # The same command on both workers resumes from the newest checkpoint and finishes exactly.
    os.makedirs(tmp_path / 'restart')
    restarted, _ = _run_workers(str(tmp_path / 'restart'), flags)
    for index in range(2):
        assert f'Resuming from checkpoint {model_dir}/ckpt-{newest} at step {newest}' in restarted.log(index)
    assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-4')
