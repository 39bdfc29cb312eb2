"""One training run per model_dir: `<model_dir>/run.lock` holds the owner's pid, host and start time.

Two runs writing checkpoints into one directory would interleave and delete each other's files. A
training run takes the lock before it writes anything; a second run on the same model_dir stops
with one line naming the owner. A lock left by a run that died (SIGKILL, power loss) is stale when
its host is this host and its pid is no longer alive: it is taken over with a warning. A lock from
another host cannot be checked; the message says to delete it if that run is gone. `--mode=eval`
only reads checkpoints and takes no lock, so an evaluator can follow a training run, as in the
original.

The lock is created atomically and exclusively on local disks (a complete temporary file hard-
linked to the lock name, which fails if the name exists). On file systems without hard links
(cloud storage) the check and the write are two steps, so two runs started in the same second
could both pass; the lock still catches every later start.
"""
import contextlib
import datetime
import json
import os
import socket
import uuid
from typing import Dict, Iterator, Optional

import tensorflow as tf
from absl import logging

from simclr_mura.config import ConfigError

LOCK_NAME = 'run.lock'


class RunLockedError(ConfigError):
    """Another live run holds the model_dir's lock."""


def _owner() -> Dict[str, object]:
    return {'pid': os.getpid(), 'host': socket.gethostname(),
            'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Alive, owned by another user.
        return True
    return True


def read_lock(model_dir: str) -> Optional[Dict[str, object]]:
    """The lock's owner, {} if the lock file is unreadable, None if there is no lock."""
    path = os.path.join(model_dir, LOCK_NAME)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else {}
    except (ValueError, tf.errors.OpError):
        return {}


def _is_stale(owner: Dict[str, object]) -> bool:
    pid = owner.get('pid')
    return (owner.get('host') == socket.gethostname() and isinstance(pid, int)
            and pid != os.getpid() and not _pid_alive(pid))


def _create(path: str, text: str) -> bool:
    """Writes `text` to `path` unless `path` exists; False if it does."""
    if '://' in path:
        if tf.io.gfile.exists(path):
            return False
        with tf.io.gfile.GFile(path, 'w') as f:
            f.write(text)
        return True
    tmp = f'{path}.{uuid.uuid4().hex[:8]}.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)


def acquire(model_dir: str) -> Dict[str, object]:
    """Takes the lock of `model_dir` (creating the directory); returns the owner record written.

    Raises:
      RunLockedError: a live run (or a run on another host) holds it.
    """
    tf.io.gfile.makedirs(model_dir)
    path = os.path.join(model_dir, LOCK_NAME)
    owner = _owner()
    text = json.dumps(owner) + '\n'
    for _ in range(2):
        if _create(path, text):
            return owner
        current = read_lock(model_dir)
        if current is None:
            continue  # Released in between: try again.
        if not _is_stale(current):
            who = (f'pid {current.get("pid")} on host {current.get("host")}, started '
                   f'{current.get("started")}' if current else 'an unreadable lock file')
            raise RunLockedError(
                f'--model_dir={model_dir} is in use by another run ({who}): wait for it to finish or '
                f'use another --model_dir; if that run is gone, delete {path}')
        logging.warning('Taking over the stale lock %s of pid %s (no longer running on this host, '
                        'started %s).', path, current.get('pid'), current.get('started'))
        tf.io.gfile.remove(path)
    raise RunLockedError(f'--model_dir={model_dir}: could not take the lock {path}; another run is '
                         'starting on it at the same time')


def release(model_dir: str, owner: Dict[str, object]) -> None:
    """Removes the lock if it is still `owner`'s."""
    current = read_lock(model_dir)
    if current and current.get('pid') == owner['pid'] and current.get('host') == owner['host']:
        tf.io.gfile.remove(os.path.join(model_dir, LOCK_NAME))


@contextlib.contextmanager
def hold(model_dir: str) -> Iterator[Dict[str, object]]:
    """`acquire` on entry, `release` on exit (also when the run fails)."""
    owner = acquire(model_dir)
    try:
        yield owner
    finally:
        release(model_dir, owner)
