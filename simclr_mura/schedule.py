"""Learning-rate schedule and step arithmetic (behaviour of google-research/simclr `tf2/model.py`
`WarmUpAndCosineDecay` / `get_train_steps` and the step counts at the top of `tf2/run.py: main`).

One deliberate change: `steps_in_next_loop` lets a training loop stop exactly at
`train_steps`, whereas the original always runs whole loops of `steps_per_loop` steps and
overshoots by up to `steps_per_loop - 1`.
"""
import math

import tensorflow as tf
import tf_keras

LEARNING_RATE_SCALINGS = ('linear', 'sqrt')


def get_train_steps(num_examples: int, train_batch_size: int, train_epochs: int,
                    train_steps: int = 0) -> int:
    """`train_steps` if non-zero, else num_examples * train_epochs // train_batch_size + 1."""
    if train_steps:
        return int(train_steps)
    return int(num_examples * train_epochs // train_batch_size + 1)


def get_warmup_steps(warmup_epochs: float, num_examples: int, train_batch_size: int) -> int:
    """int(round(warmup_epochs * num_examples // train_batch_size)); floor division first."""
    return int(round(warmup_epochs * num_examples // train_batch_size))


def get_scaled_learning_rate(base_learning_rate: float, train_batch_size: int,
                             learning_rate_scaling: str) -> float:
    """base * B / 256 ('linear') or base * sqrt(B) ('sqrt')."""
    if learning_rate_scaling == 'linear':
        return base_learning_rate * train_batch_size / 256.
    if learning_rate_scaling == 'sqrt':
        return base_learning_rate * math.sqrt(train_batch_size)
    raise ValueError(f'Unknown learning_rate_scaling {learning_rate_scaling!r}; '
                     f'use one of {LEARNING_RATE_SCALINGS}.')


def get_epoch_steps(num_examples: int, train_batch_size: int) -> int:
    """Steps per epoch: int(round(num_examples / batch)), Python round-half-to-even (2.5 -> 2)."""
    return int(round(num_examples / train_batch_size))


def get_checkpoint_steps(checkpoint_steps: int, checkpoint_epochs: int, epoch_steps: int) -> int:
    """`checkpoint_steps` if non-zero, else checkpoint_epochs * epoch_steps (= steps per loop)."""
    return int(checkpoint_steps or checkpoint_epochs * epoch_steps)


def get_eval_steps(eval_steps: int, num_eval_examples: int, eval_batch_size: int) -> int:
    """`eval_steps` if non-zero, else ceil(num_eval_examples / eval_batch_size)."""
    return int(eval_steps or math.ceil(num_eval_examples / eval_batch_size))


def steps_in_next_loop(current_step: int, train_steps: int, steps_per_loop: int) -> int:
    """Steps to run in the next training loop: min(steps_per_loop, train_steps - current_step).

    Fixes the original's overshoot: the last loop is shortened so training ends exactly
    at `train_steps`. Returns 0 once `current_step >= train_steps`.
    """
    if steps_per_loop < 1:
        raise ValueError(
            f'steps_per_loop must be >= 1, got {steps_per_loop}. It comes from checkpoint_steps '
            'or checkpoint_epochs * round(num_train_examples / train_batch_size); set '
            'checkpoint_steps explicitly when an epoch is shorter than half a batch.')
    return max(0, min(steps_per_loop, train_steps - current_step))


class WarmUpAndCosineDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to the scaled learning rate, then cosine decay to 0.

    lr(t) = t / w * scaled_lr for t < w, else
    scaled_lr * 0.5 * (1 + cos(pi * min(t - w, T - w) / (T - w))), with w the warmup
    steps and T the total training steps.
    """

    def __init__(self, base_learning_rate, num_examples, train_batch_size,
                 learning_rate_scaling, warmup_epochs, train_epochs, train_steps=0, name=None):
        super().__init__()
        if learning_rate_scaling not in LEARNING_RATE_SCALINGS:
            raise ValueError(f'Unknown learning_rate_scaling {learning_rate_scaling!r}; '
                             f'use one of {LEARNING_RATE_SCALINGS}.')
        self.base_learning_rate = base_learning_rate
        self.num_examples = num_examples
        self.train_batch_size = train_batch_size
        self.learning_rate_scaling = learning_rate_scaling
        self.warmup_epochs = warmup_epochs
        self.train_epochs = train_epochs
        self.train_steps = train_steps
        self._name = name
        self.scaled_learning_rate = get_scaled_learning_rate(
            base_learning_rate, train_batch_size, learning_rate_scaling)
        self.warmup_steps = get_warmup_steps(warmup_epochs, num_examples, train_batch_size)
        self.total_steps = get_train_steps(num_examples, train_batch_size, train_epochs,
                                           train_steps)

    def __call__(self, step):
        with tf.name_scope(self._name or 'WarmUpAndCosineDecay'):
            step = tf.cast(step, tf.float32)
            scaled_lr = self.scaled_learning_rate
            warmup = self.warmup_steps
            if warmup:
                warmup_lr = step / float(warmup) * scaled_lr
            else:
                warmup_lr = tf.fill(tf.shape(step), tf.constant(scaled_lr, tf.float32))
            decay_steps = self.total_steps - warmup
            if decay_steps > 0:
                decay_steps = tf.constant(decay_steps, tf.float32)
                fraction = tf.minimum(step - warmup, decay_steps) / decay_steps
                cosine_lr = scaled_lr * (0.5 * (1.0 + tf.cos(tf.constant(math.pi) * fraction)))
            else:
                # The original divides by zero (NaN) when total == warmup; the decay has
                # nothing left to do, so the rate is the end of the cosine: 0.
                cosine_lr = tf.zeros_like(step)
            return tf.where(step < warmup, warmup_lr, cosine_lr)

    def get_config(self):
        return {
            'base_learning_rate': self.base_learning_rate,
            'num_examples': self.num_examples,
            'train_batch_size': self.train_batch_size,
            'learning_rate_scaling': self.learning_rate_scaling,
            'warmup_epochs': self.warmup_epochs,
            'train_epochs': self.train_epochs,
            'train_steps': self.train_steps,
            'name': self._name,
        }
