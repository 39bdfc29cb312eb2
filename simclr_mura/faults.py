"""Test-only fault injection: makes the process kill itself at a named point of a run.

The reliability tests (tests/reliability/) need a SIGKILL to land at an exact place (inside a
training loop, in a checkpoint write, during evaluation, during the SavedModel export); an
external `kill` at a guessed time would land somewhere different on every machine. Setting

    SIMCLR_MURA_FAULT=<point>[@<step>]

makes `maybe_fail(point, step)` SIGKILL the process when it reaches `point` (at `step`, if given).
Nothing else reads the variable, and an unset variable costs one dict lookup per call. The points:

  train_step   the steps of a training loop have run but its checkpoint is not written yet
  checkpoint   a checkpoint was written and then torn (its data file cut to half), as a crash
               on a file system without atomic renames (object stores) can leave it
  eval         the predictions CSV is written, result.json is not
  export       the SavedModel is written under its temporary name, not yet renamed into place

See docs/reliability.md for what each test proves.
"""
import os
import signal
from typing import Optional

import tensorflow as tf

ENV_VAR = 'SIMCLR_MURA_FAULT'
POINTS = ('train_step', 'checkpoint', 'eval', 'export')


def _requested(point: str, step: Optional[int]) -> bool:
    value = os.environ.get(ENV_VAR)
    if not value:
        return False
    name, _, at = value.partition('@')
    if name not in POINTS:
        raise ValueError(f'{ENV_VAR}={value}: unknown fault point {name!r}; one of {", ".join(POINTS)}')
    return name == point and (not at or (step is not None and int(at) == step))


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_fail(point: str, step: Optional[int] = None) -> None:
    """SIGKILLs this process if SIMCLR_MURA_FAULT names `point` (and `step`)."""
    if _requested(point, step):
        _kill()


def maybe_tear_checkpoint(checkpoint_prefix: str, step: int) -> None:
    """The `checkpoint` point: cuts the checkpoint's data files to half their size, then SIGKILLs."""
    if not _requested('checkpoint', step):
        return
    for path in tf.io.gfile.glob(checkpoint_prefix + '.data-*'):
        with tf.io.gfile.GFile(path, 'rb') as f:
            data = f.read()
        with tf.io.gfile.GFile(path, 'wb') as f:
            f.write(data[:len(data) // 2])
    _kill()
