"""The seam between the training loop and a training recipe.

A recipe is everything that differs between ways of training a model on MURA: the network, its
input preprocessing and augmentation, the loss and the metrics logged beside it, the optimizer and
learning-rate schedule, the initial weights, extra checkpointed state and end-of-epoch hooks. The
loop (`train.py`), evaluation (`evaluate.py`), export (`export.py`) and `main.py` ask the recipe
chosen once from the Config (`recipes.for_config`) and never branch on `train_mode`.

Adding a recipe: one new module with a `Recipe` subclass and one registration line in
`recipes/__init__.py`.
"""
import abc
import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from simclr_mura import data_util
from simclr_mura import model as model_lib
from simclr_mura.config import Config

# `fn(image, is_training=..., seed=None)`: a decoded grey radiograph (uint8, H x W x 1) -> float32
# (image_size, image_size, 3) in [0, 1]; `seed` is given in seeded runs (see `data.build_input_fn`).
PreprocessFn = Callable[..., tf.Tensor]
# Called after the loop that ends an epoch, before its checkpoint is saved: step -> scalars to log.
EpochHook = Callable[[int], Dict[str, float]]


@dataclasses.dataclass(frozen=True)
class TrainInput:
    """How the training input is made: the recipe's part of `data.build_input_fn`'s arguments."""
    is_pretrain: bool  # Two augmented views per example (contrastive pretraining), else one.
    color_jitter_strength: float = 0.
    preprocess_fn: Optional[PreprocessFn] = None  # None: SimCLR's own view preprocessing.
    # The SimCLR random crop's smallest share of the image (--crop_min_area; the original's 0.08).
    crop_min_area: float = data_util.DEFAULT_CROP_MIN_AREA
    # Two augmentations of one image ('augment') or two images of one study ('study_views').
    positive_pairs: str = 'augment'

    def as_kwargs(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


class Recipe(abc.ABC):
    """One training recipe: what the loop, evaluation and export ask of it. Chosen once from the
    Config. Methods marked as called inside `strategy.scope()` may create variables."""

    # Whether `compute_loss` takes a per-step blur seed (seeded pretraining blur; see train.py).
    uses_blur_seed = False

    def __init__(self, config: Config):
        self.config = config

    @abc.abstractmethod
    def architecture(self) -> str:
        """Short description of the network, for checkpoint-mismatch messages."""

    @abc.abstractmethod
    def build_model(self, num_classes: int):
        """The model with its variables created (called inside `strategy.scope()`).

        The model's `call(images, training=...)` returns `(projection or None, logits or None)`;
        evaluation and export use `named_outputs` and `supervised_head`."""

    @abc.abstractmethod
    def train_input(self) -> TrainInput:
        """Views, preprocessing and augmentation of the training input."""

    def eval_preprocess_fn(self) -> Optional[PreprocessFn]:
        """Evaluation (and serving, and epoch-hook) preprocessing; None: SimCLR's centre crop."""
        return None

    @abc.abstractmethod
    def learning_rate(self, num_train_examples: int):
        """The learning-rate schedule, a Keras `LearningRateSchedule` (the loop logs its value at
        each step; called inside `strategy.scope()`)."""

    def optimizer(self, learning_rate):
        """The optimizer for `learning_rate` (called inside `strategy.scope()`): --optimizer as the
        original's `build_optimizer`, with a loss scale under mixed_float16."""
        c = self.config
        return with_loss_scale(
            model_lib.build_optimizer(c.optimizer, learning_rate, momentum=c.momentum,
                                      weight_decay=c.weight_decay), c.mixed_precision)

    def checkpoint_extras(self) -> Dict[str, tf.Module]:
        """Extra state saved in the training checkpoint beside model and optimizer."""
        return {}

    @abc.abstractmethod
    def metric_names(self) -> List[str]:
        """Names of the per-step statistics `compute_loss` returns (averaged over each loop)."""

    @abc.abstractmethod
    def compute_loss(self, model, images, targets, *, strategy: tf.distribute.Strategy,
                     blur_seed=None) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
        """The replica's loss (weight decay included) and its statistics, inside the gradient tape.

        `targets` holds 'label' (one-hot [B, 2]) and 'weight' ([B] per-example class weights)."""

    def reference_scalars(self, global_batch: int) -> Dict[str, float]:
        """Constants logged beside the metrics each loop and written as summaries (e.g. chance)."""
        return {}

    @abc.abstractmethod
    def initialize(self, model) -> None:
        """Initial weights when there is no checkpoint to resume from."""

    def epoch_hook(self, model, builder, strategy: tf.distribute.Strategy,
                   class_weights: Optional[np.ndarray]) -> Optional[EpochHook]:
        """What runs at the end of every epoch, or None."""
        return None

    def describe_start(self, epoch_steps: int) -> Optional[str]:
        """An extra line for the start of training, or None."""
        return None


def with_loss_scale(optimizer, mixed_precision: str):
    """`optimizer`, wrapped in a dynamic loss scale under the mixed_float16 policy."""
    if mixed_precision == 'mixed_float16':
        return tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def add_weight_decay(model, config: Config, loss, stats: Dict[str, tf.Tensor]):
    """Adds the weight-decay term (`model.add_weight_decay`) to `loss`; records it and the total
    in `stats`; returns (loss, stats), as `Recipe.compute_loss` does."""
    weight_decay = tf.cast(model_lib.add_weight_decay(model, config.optimizer, config.weight_decay),
                           tf.float32)
    loss += weight_decay
    stats['train/weight_decay'] = weight_decay
    stats['train/total_loss'] = loss
    return loss, stats
