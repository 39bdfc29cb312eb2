"""The MURA paper's supervised DenseNet-169 baseline (`--train_mode=baseline`).

The model, loss, preprocessing and plateau state are in `densenet.py`; this recipe wires them
into the loop: one view with the baseline's preprocessing (training: resize, flip, rotation;
evaluation and serving: the resize alone), the weighted binary cross-entropy, Adam at a constant
rate times the plateau scale (checkpointed as `plateau`), initial weights from
`--baseline_weights`, and the end-of-epoch validation loss that drives the plateau decay.
"""
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_mura import densenet
from simclr_mura import evaluate as evaluate_lib
from simclr_mura.recipes import base


class Baseline(base.Recipe):
    """--train_mode=baseline: DenseNet-169, weighted BCE, Adam with the optional plateau decay."""

    def __init__(self, config):
        super().__init__(config)
        self._plateau: Optional[densenet.PlateauState] = None

    @property
    def plateau_decay(self) -> bool:
        return self.config.baseline_plateau_decay

    def architecture(self) -> str:
        return densenet.ARCHITECTURE

    def build_model(self, num_classes: int):
        # One sigmoid logit, whatever `num_classes`.
        return densenet.build_model(self.config.image_size, self.config.zero_init_logits_layer)

    def _preprocess_fn(self):
        return densenet.preprocess_fn(self.config.image_size, self.config.baseline_rotation_degrees)

    def train_input(self) -> base.TrainInput:
        return base.TrainInput(is_pretrain=False, preprocess_fn=self._preprocess_fn())

    def eval_preprocess_fn(self):
        return self._preprocess_fn()

    def learning_rate(self, num_train_examples: int):
        # The paper's Adam at the given rate: no batch scaling, warm-up or cosine decay.
        if self.plateau_decay and self._plateau is None:
            self._plateau = densenet.PlateauState()
        return densenet.ConstantLearningRate(self.config.learning_rate, self._plateau)

    def checkpoint_extras(self) -> Dict[str, object]:
        return {'plateau': self._plateau} if self._plateau is not None else {}

    def metric_names(self) -> List[str]:
        return ['train/weight_decay', 'train/total_loss', 'train/supervised_loss',
                'train/supervised_acc']

    def compute_loss(self, model, images, targets, *, strategy, blur_seed=None):
        _, logits = model(images, training=True)
        logits = tf.cast(logits, tf.float32)
        # The per-example weights are 1 with --class_weighting=none.
        sup_loss = densenet.weighted_bce(targets['label'], targets['weight'], logits)
        stats = {'train/supervised_loss': sup_loss,
                 'train/supervised_acc': densenet.binary_accuracy(targets['label'], logits)}
        return base.add_weight_decay(model, self.config, tf.constant(0.0) + sup_loss, stats)

    def initialize(self, model) -> None:
        densenet.initialize_weights(model, self.config.baseline_weights,
                                    self.config.zero_init_logits_layer)

    def epoch_hook(self, model, builder, strategy, class_weights: Optional[np.ndarray]):
        """After each epoch: the weighted BCE on --baseline_plateau_split, then the plateau decision."""
        if self._plateau is None:
            return None
        c, plateau = self.config, self._plateau
        predictor = evaluate_lib.Predictor(model, strategy)
        part_names = builder.info.features['body_part'].names
        preprocess_fn = self.eval_preprocess_fn()

        def end_of_epoch(step: int) -> Dict[str, float]:
            predictions = predictor(builder, split=c.baseline_plateau_split,
                                    batch_size=c.eval_batch_size, image_size=c.image_size,
                                    preprocess_fn=preprocess_fn)
            loss = densenet.validation_loss(predictions, class_weights, part_names)
            decayed = plateau.update(loss)
            logging.info('Epoch end at step %d: validation loss %.5f on %s (best %.5f)%s.', step, loss,
                         c.baseline_plateau_split, float(plateau.best_loss.numpy()),
                         f'; no improvement, learning rate x{densenet.PLATEAU_FACTOR} -> '
                         f'{c.learning_rate * float(plateau.scale.numpy()):.3g}' if decayed else '')
            return {'baseline/validation_loss': loss,
                    'baseline/learning_rate_scale': float(plateau.scale.numpy())}

        return end_of_epoch

    def describe_start(self, epoch_steps: int) -> Optional[str]:
        c = self.config
        return (f'Baseline: Adam at a constant learning rate {c.learning_rate:g}'
                + (f', x{densenet.PLATEAU_FACTOR} when the loss on {c.baseline_plateau_split} does not '
                   f'improve over an epoch ({max(epoch_steps, 1)} steps)' if self.plateau_decay else '')
                + '.')
