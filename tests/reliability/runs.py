"""Starting `python run.py` as a subprocess the way a user (or a preempting scheduler) would.

Each start imports TensorFlow and traces the training step (~15-30 s on 2 cores), so the tests
start as few processes as they can and chain faults in one model_dir.
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_PY = os.path.join(REPO, 'run.py')
TIMEOUT = 600

# A tiny pretraining run with linear eval (ResNet-18, 40 px: the smallest size that evaluates,
# since <= 32 px takes the original's CIFAR path without eval crop), deterministic on CPU.
TINY_FLAGS = ('--mode=train_then_eval', '--train_mode=pretrain', '--resnet_depth=18', '--image_size=40',
              '--train_batch_size=4', '--eval_batch_size=16', '--warmup_epochs=0', '--learning_rate=0.1',
              '--seed=1', '--deterministic')


def tiny_flags(data_dir: str, model_dir: str, dataset: str, **overrides) -> List[str]:
    flags = list(TINY_FLAGS) + [f'--dataset={dataset}', f'--data_dir={data_dir}', f'--model_dir={model_dir}']
    flags += [f'--{name}={value}' for name, value in overrides.items()]
    return flags


def environment(fault: Optional[str] = None, **extra: str) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
               TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
    env.pop('SIMCLR_MURA_FAULT', None)
    if fault:
        env['SIMCLR_MURA_FAULT'] = fault
    env.update(extra)
    return env


@dataclasses.dataclass
class Finished:
    returncode: int
    stderr: str

    @property
    def error_lines(self) -> List[str]:
        return [line for line in self.stderr.splitlines() if line.startswith('run.py: error:')]

    def resumed_from(self) -> Optional[int]:
        """The step a run said it resumed at (None if it started fresh)."""
        for line in self.stderr.splitlines():
            if 'Resuming from checkpoint' in line:
                return int(line.split(' at step ')[1].split()[0])
        return None

    def tail(self, lines: int = 30) -> str:
        return '\n'.join(self.stderr.splitlines()[-lines:])


def run(flags: Sequence[str], env: Dict[str, str], cwd: str, preexec_fn=None) -> Finished:
    proc = subprocess.run([sys.executable, RUN_PY, *flags], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=TIMEOUT, preexec_fn=preexec_fn)
    return Finished(proc.returncode, proc.stderr)


def start(flags: Sequence[str], env: Dict[str, str], cwd: str, log_path: str) -> subprocess.Popen:
    """Starts a run in the background, its stderr to `log_path` (collect it with `finish`)."""
    with open(log_path, 'w', encoding='utf-8') as log:
        return subprocess.Popen([sys.executable, RUN_PY, *flags], stdout=subprocess.DEVNULL,
                                stderr=log, env=env, cwd=cwd)


def finish(proc: subprocess.Popen, log_path: str) -> Finished:
    try:
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open(log_path, encoding='utf-8') as log:
        return Finished(proc.returncode, log.read())


def run_and_sigterm(flags: Sequence[str], env: Dict[str, str], cwd: str, after_line: str,
                    delay: float) -> Finished:
    """Runs until a stderr line contains `after_line`, waits `delay` s, sends SIGTERM, waits."""
    proc = subprocess.Popen([sys.executable, RUN_PY, *flags], stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if after_line in line:
                time.sleep(delay)
                proc.send_signal(signal.SIGTERM)
                break
        lines.extend(proc.stderr)
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Finished(proc.returncode, ''.join(lines))


def checkpoint_step(prefix: str) -> int:
    """The optimizer's iteration count stored in a training checkpoint (saved as `global_step`)."""
    reader = tf.train.load_checkpoint(prefix)
    return int(reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE'))


def model_weights(prefix: str) -> Dict[str, object]:
    """Every model variable, optimizer slot and the step of a checkpoint, by key."""
    reader = tf.train.load_checkpoint(prefix)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key not in ('_CHECKPOINTABLE_OBJECT_GRAPH', 'save_counter/.ATTRIBUTES/VARIABLE_VALUE')}


def read_json(path: str):
    with open(path, encoding='utf-8') as f:
        return json.load(f)
