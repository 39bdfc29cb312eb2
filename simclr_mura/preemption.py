"""SIGTERM during training: finish the step in progress, save a checkpoint, exit.

Preemptible TPUs and GPUs (and batch schedulers) send SIGTERM some seconds before they kill a
process. While the watch is on, SIGTERM sets a flag that the compiled training loop reads before
every step, so the loop stops after the step in progress; the trainer then saves a checkpoint at
that step and raises `Preempted` (run.py: one line on stderr, exit code 143 = 128 + SIGTERM, so a
scheduler sees an unfinished run). Rerunning the same command resumes from that step.

Python runs signal handlers only between bytecodes of the main thread, which sits inside the
compiled loop for a whole loop of steps. So the handler's C part also writes to a wakeup pipe
(`signal.set_wakeup_fd`) and a small thread blocked on that pipe sets the TensorFlow flag at once.
"""
import os
import signal
import threading
from typing import Optional

import tensorflow as tf
from absl import logging

EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint at `step` (or, with `during`, an
    evaluation or export of checkpoint `checkpoint` stopped before writing its results)."""

    def __init__(self, step: int, checkpoint: str, during: Optional[str] = None):
        if during is None:
            message = (f'stopped by SIGTERM at step {step} after saving checkpoint {checkpoint}; '
                       'rerun the same command to continue from there')
        else:  # Evaluation or export of a saved checkpoint: nothing of it was written.
            message = (f'stopped by SIGTERM during the {during} of checkpoint {checkpoint} (step '
                       f'{step}) before its results were written; rerun the same command to do it again')
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class SigtermWatch:
    """Context manager: while active, SIGTERM sets `stop_flag` (a bool tf.Variable) and `requested`.

    Outside the main thread (where Python cannot install signal handlers) it does nothing.
    """

    def __init__(self):
        with tf.init_scope():
            self.stop_flag = tf.Variable(False, trainable=False, name='sigterm_received')
        self._requested = False
        self._previous_handler = None
        self._previous_wakeup_fd: Optional[int] = None
        self._pipe = None
        self._thread = None

    @property
    def requested(self) -> bool:
        return self._requested or bool(self.stop_flag.numpy())

    def _on_sigterm(self, signum, frame):  # pylint: disable=unused-argument
        self._requested = True

    def _watch_pipe(self, read_fd: int):
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:  # The write end was closed: the watch is over.
                return
            if signal.SIGTERM in data:
                logging.warning('SIGTERM received: stopping after the current step (training: '
                                'to save a checkpoint).')
                self.stop_flag.assign(True)

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch_pipe, args=(read_fd,), daemon=True,
                                        name='sigterm_watch')
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._pipe is None:
            return False
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        signal.signal(signal.SIGTERM, self._previous_handler)
        read_fd, write_fd = self._pipe
        os.close(write_fd)
        self._thread.join(timeout=5)
        os.close(read_fd)
        self._pipe = None
        return False
