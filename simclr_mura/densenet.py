"""DenseNet-169 supervised baseline: the MURA paper's model and its pieces (`--train_mode=baseline`;
the recipe that wires them into training is `recipes/baseline.py`).

Model: `tf_keras.applications.DenseNet169(include_top=False, pooling='avg')` on 3-channel input
(the grey radiograph tiled to RGB), then one Dense logit; the probability of 'abnormal' is its
sigmoid. `call` returns `(None, logits)` like the SimCLR model when fine-tuning, so training,
evaluation, checkpoints and export run through the same code (`train.py`, `evaluate.py`,
`export.py`).

Input normalisation: the model takes images in [0, 1] and normalises them itself with the ImageNet
per-channel mean and std, (x - mean) / std, which is Keras' `densenet.preprocess_input` ('torch'
mode) and what the paper and the seed project used. The same normalisation is used for every
`--baseline_weights`, `none` included, so runs from random and from ImageNet weights see the same
inputs and their checkpoints are interchangeable.

Initial weights (`--baseline_weights`, loaded only when `model_dir` holds no checkpoint to resume):
`none` (Keras' random initialisation), `imagenet` (Keras' DenseNet-169 ImageNet weights without the
classifier, downloaded once into ~/.keras/models/; without internet a `ConfigError` says what to do),
or a path: a `.h5` weights file of a DenseNet-169 without top (e.g. that Keras file), or a
checkpoint (prefix, directory or SavedModel) of a baseline run.

Loss: the paper's weighted binary cross-entropy, mean over the batch of
w * -(y log p + (1 - y) log(1 - p)); the per-example weight w (w_abnormal = |N|/(|N|+|A|) for
abnormal images, w_normal = |A|/(|N|+|A|) for normal ones, per body part, from the image counts of
the training split) comes from the input pipeline (`data.mura_class_weight_table`); with
`--class_weighting=none` it is 1.

Augmentation (training only): resize to image_size x image_size (bilinear, aspect ratio not kept,
as the paper's 320 x 320), random horizontal flip, random rotation by an angle uniform in
+-rotation_degrees (bilinear, corners filled with black). Evaluation: the same resize, nothing else.

Learning rate: Adam (beta 0.9 / 0.999) at the constant `--learning_rate` (no batch scaling, warm-up
or decay), optionally divided by 10 whenever the validation loss does not improve over an epoch
(`--baseline_plateau_decay`; Keras' ReduceLROnPlateau with patience 1 and min_delta 0; an epoch
is round(training images / batch) steps, as for --checkpoint_epochs). The
validation loss is the loss above over every image of `--baseline_plateau_split` (eval
preprocessing, the training class weights), computed from the predicted probabilities clipped to
[1e-7, 1 - 1e-7]. Its state (scale, best loss) is part of the training checkpoint, so a resumed run
continues with the decayed rate.

Flags without effect in baseline mode: the ResNet and projection-head flags, learning_rate_scaling,
warmup_epochs, color_jitter_strength, use_blur, batch_norm_decay and global_bn (batch norm is Keras'
DenseNet's: momentum 0.99, epsilon 1.001e-5, per replica). `--checkpoint` is refused (use
`--baseline_weights=PATH`) and `--optimizer` must be adam (Keras' Adam, epsilon 1e-7).
"""
import functools
import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras
from absl import logging

from simclr_mura import checkpoints
from simclr_mura import data_util
from simclr_mura.config import ConfigError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHITECTURE = 'DenseNet-169 baseline (tf_keras.applications.DenseNet169, avg pooling, 1 sigmoid logit)'
# What the SavedModel's __call__ returns (the SimCLR export's ResNet block outputs do not exist here).
EXPORT_OUTPUTS = ('final_avg_pool', 'logits_sup')
# DenseNet-169's last layer before the pooling: the final batch norm's ReLU (tf_keras names it so).
FINAL_FEATURE_MAP = 'relu'
PLATEAU_FACTOR = 0.1
PROBABILITY_EPSILON = 1e-7  # As Keras' binary cross-entropy on probabilities.
# Keras' ImageNet weights of DenseNet-169 without the classifier (as tf_keras.applications uses).
IMAGENET_WEIGHTS_FILE = 'densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5'
IMAGENET_WEIGHTS_URL = ('https://storage.googleapis.com/tensorflow/keras-applications/densenet/'
                        + IMAGENET_WEIGHTS_FILE)
IMAGENET_WEIGHTS_MD5 = 'b8c4d4c20dd625c148057b9ff1c1176b'


def _normalise(images: tf.Tensor) -> tf.Tensor:
    """RGB images in [0, 1] -> the ImageNet-normalised input of Keras' DenseNet-169."""
    if images.shape[-1] != 3:
        raise ValueError(f'The baseline takes 3-channel images (grey tiled to RGB) in [0, 1], got '
                         f'shape {images.shape}.')
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return (tf.cast(images, tf.float32) - mean) / std


class BaselineModel(tf_keras.Model):
    """DenseNet-169 features -> Dense(1) logit; call(images in [0, 1]) -> (None, logits [B, 1]).

    Attributes `backbone` (the Keras functional DenseNet-169) and `supervised_head` (the Dense layer,
    named `head_supervised`) are the checkpoint names `model/backbone/...` and
    `model/supervised_head/...`.

    Args:
      zero_init_logits_layer: start the head's kernel from zeros (bias is always zero-initialised).
    """

    export_output_names = EXPORT_OUTPUTS

    def __init__(self, zero_init_logits_layer: bool = False, **kwargs):
        super().__init__(**kwargs)
        # Spatial size left open, so the export can serve any size and the weights fit any size.
        self.backbone = tf_keras.applications.DenseNet169(
            include_top=False, weights=None, input_shape=(None, None, 3), pooling='avg')
        self.supervised_head = tf_keras.layers.Dense(
            1, kernel_initializer='zeros' if zero_init_logits_layer else 'glorot_uniform',
            bias_initializer='zeros', name='head_supervised')

    def named_outputs(self, inputs, training: bool = False) -> Dict[str, tf.Tensor]:
        """{'final_avg_pool': pooled DenseNet features [B, 1664], 'logits_sup': logits [B, 1]}."""
        features = self.backbone(_normalise(inputs), training=training)
        return {'final_avg_pool': features,
                'logits_sup': self.supervised_head(features, training=training)}

    def call(self, inputs, training=None):
        return None, self.named_outputs(inputs, bool(training))['logits_sup']

    def feature_map_outputs(self, inputs) -> Tuple[tf.Tensor, tf.Tensor]:
        """(DenseNet-169's last feature map [B, h, w, 1664] before its average pooling, logits) in
        inference mode: with a global average pool and one dense layer, its Grad-CAM is the MURA
        paper's class activation map (`gradcam.py`)."""
        # A view of the backbone's own layers, built per call and not kept: as an attribute it
        # would add a second path to the same variables in every checkpoint.
        with_map = tf_keras.Model(self.backbone.input, [self.backbone.get_layer(FINAL_FEATURE_MAP).output,
                                                        self.backbone.output])
        feature_map, features = with_map(_normalise(inputs), training=False)
        return feature_map, self.supervised_head(features, training=False)

    def weight_decay_variables(self):
        """Trainable variables except batch-norm scales and offsets (for `model.add_weight_decay`)."""
        batch_norm = {id(v) for layer in self.backbone.layers
                      if isinstance(layer, tf_keras.layers.BatchNormalization)
                      for v in layer.trainable_weights}
        return [v for v in self.trainable_variables if id(v) not in batch_norm]

    def zero_init_head(self) -> None:
        """Sets the head's kernel and bias to zero."""
        for variable in self.supervised_head.weights:
            variable.assign(tf.zeros_like(variable))


def build_model(image_size: int, zero_init_logits_layer: bool = False) -> BaselineModel:
    """The baseline model with its variables created (call inside `strategy.scope()`)."""
    model = BaselineModel(zero_init_logits_layer)
    model(tf.zeros([1, image_size, image_size, 3]), training=False)
    return model


# ----------------------------------------------------------------------------- initial weights

def fetch_imagenet_weights(cache_dir: Optional[str] = None) -> str:
    """Path of Keras' DenseNet-169 ImageNet weights (no top), downloaded on first use.

    Args:
      cache_dir: Keras cache root (default ~/.keras); the file goes to `<cache_dir>/models/`.

    Raises:
      ConfigError: the download failed (e.g. no internet), with what to do instead.
    """
    try:
        return tf_keras.utils.get_file(IMAGENET_WEIGHTS_FILE, IMAGENET_WEIGHTS_URL, cache_subdir='models',
                                       file_hash=IMAGENET_WEIGHTS_MD5, cache_dir=cache_dir)
    except Exception as e:  # get_file raises a bare Exception for network errors.
        reason = first_line(e)
        raise ConfigError(
            f'--baseline_weights=imagenet: the Keras ImageNet weights of DenseNet-169 could not be '
            f'downloaded ({reason}). Without internet access here, download {IMAGENET_WEIGHTS_URL} '
            f'elsewhere and pass --baseline_weights=/path/to/{IMAGENET_WEIGHTS_FILE} (or copy it to '
            '~/.keras/models/), or train from random weights with --baseline_weights=none') from e


def _load_h5(model: BaselineModel, path: str, flag_value: str) -> None:
    try:
        model.backbone.load_weights(path)
    except Exception as e:  # Keras raises ValueError, OSError or TF errors for files that do not fit.
        reason = first_line(e)
        raise ConfigError(
            f'--baseline_weights={flag_value}: {path} does not fit the DenseNet-169 backbone ({reason}); '
            f'pass the Keras weights of a DenseNet-169 without top ({IMAGENET_WEIGHTS_FILE}) or a '
            'checkpoint of a baseline run') from e


def _load_checkpoint(model: BaselineModel, weights: str) -> str:
    try:
        path = checkpoints.resolve_checkpoint_path(weights)
    except ValueError as e:
        raise ConfigError(f'--baseline_weights: {e}') from e
    checkpoints.check_compatible(model, path, ARCHITECTURE, label='--baseline_weights')
    tf.train.Checkpoint(model=model).restore(path).expect_partial()
    return path


def initialize_weights(model: BaselineModel, weights: str, zero_init_logits_layer: bool = False,
                       cache_dir: Optional[str] = None) -> str:
    """Loads `--baseline_weights` into the built `model`; returns a description for the log.

    Raises:
      ConfigError: the ImageNet weights cannot be downloaded, or the file or checkpoint does not exist
        or does not fit the model.
    """
    if weights == 'none':
        description = 'random initialisation (--baseline_weights=none)'
    elif weights == 'imagenet':
        path = fetch_imagenet_weights(cache_dir)
        _load_h5(model, path, weights)
        description = f'Keras ImageNet weights {path}'
    elif (tf.io.gfile.exists(weights) and not tf.io.gfile.isdir(weights)
          and not tf.io.gfile.exists(weights + '.index')):
        _load_h5(model, weights, weights)
        description = f'weights file {weights}'
    elif tf.io.gfile.exists(weights) or tf.io.gfile.exists(weights + '.index'):
        description = f'checkpoint {_load_checkpoint(model, weights)}'
    else:
        raise ConfigError(f'--baseline_weights={weights}: no such file, directory or checkpoint; pass none, '
                          'imagenet, a DenseNet-169 weights file (.h5) or a baseline checkpoint')
    if zero_init_logits_layer:
        model.zero_init_head()
    logging.info('Initialised the DenseNet-169 baseline from %s%s.', description,
                 ' (head zeroed)' if zero_init_logits_layer else '')
    return description


# ----------------------------------------------------------------------------- loss and accuracy

def weighted_bce(labels: tf.Tensor, weights: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """The paper's weighted BCE, mean over the local batch.

    Args:
      labels: one-hot [B, 2] (column 1 = abnormal), as the input pipeline gives them.
      weights: [B] per-example weights (w_abnormal or w_normal of the example's body part; 1 off).
      logits: [B, 1] head outputs.
    """
    abnormal = tf.cast(labels[:, 1], tf.float32)
    losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=abnormal,
                                                     logits=tf.cast(logits[:, 0], tf.float32))
    return tf.reduce_mean(tf.cast(weights, tf.float32) * losses)


def binary_accuracy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Fraction of rows where (sigmoid(logit) > 0.5) equals the label (one-hot [B, 2])."""
    hits = tf.equal(logits[:, 0] > 0, labels[:, 1] > 0.5)
    return tf.reduce_mean(tf.cast(hits, tf.float32))


def validation_loss(predictions: pd.DataFrame, class_weights: Optional[np.ndarray],
                    part_names: Sequence[str]) -> float:
    """Mean weighted BCE of per-image predictions (columns body_part, label, probability).

    `class_weights` is [part, label] -> weight as `data.mura_class_weight_table(...).weights` (None: all 1).
    """
    if predictions.empty:
        raise ValueError('no predictions to compute a validation loss from')
    p = np.clip(predictions['probability'].to_numpy(np.float64), PROBABILITY_EPSILON,
                1 - PROBABILITY_EPSILON)
    y = predictions['label'].to_numpy(np.int64)
    losses = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    if class_weights is not None:
        part_ids = np.array([list(part_names).index(part) for part in predictions['body_part']])
        losses = losses * np.asarray(class_weights, np.float64)[part_ids, y]
    return float(losses.mean())


# ----------------------------------------------------------------------------- augmentation

def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear (antialiased) resize to image_size x image_size, aspect ratio not kept."""
    return tf.image.resize(image, [image_size, image_size], method='bilinear', antialias=True)


def rotate(image: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Rotates an (H, W, C) float image by `angle` radians about its centre (counter-clockwise as
    displayed, for angle > 0); bilinear, with zeros where the rotated image has no source pixel."""
    height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Each output pixel p samples the input at c + R (p - c), c the centre, R the rotation matrix.
    cx, cy = (width - 1) / 2, (height - 1) / 2
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0., 0.])
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2], fill_value=tf.constant(0., tf.float32),
        interpolation='BILINEAR', fill_mode='CONSTANT')
    return rotated[0]


def preprocess_image(image: tf.Tensor, *, image_size: int, is_training: bool,
                     rotation_degrees: float = 30.0, seed: Optional[tf.Tensor] = None) -> tf.Tensor:
    """A decoded radiograph (uint8 or float in [0, 1], 1 or 3 channels) -> float32
    (image_size, image_size, 3) in [0, 1]: resize, and when training a random horizontal flip and
    a random rotation in +-rotation_degrees. `seed` ([2] int) makes the augmentation a pure function
    of (image, seed); None draws one (see `data_util`)."""
    image = tf.image.convert_image_dtype(image, dtype=tf.float32)
    image = resize(image, image_size)
    if is_training:
        flip_seed, angle_seed = tf.unstack(
            tf.random.experimental.stateless_split(data_util.resolve_seed(seed), num=2))
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        if rotation_degrees > 0:
            degrees = tf.random.stateless_uniform([], seed=angle_seed, minval=-rotation_degrees,
                                                  maxval=rotation_degrees)
            image = rotate(image, degrees * (math.pi / 180))
    # Tiled last, so the resize and rotation work on one channel.
    image = data_util.grayscale_to_rgb(image)
    return tf.clip_by_value(tf.reshape(image, [image_size, image_size, 3]), 0., 1.)


def preprocess_fn(image_size: int, rotation_degrees: float):
    """`fn(image, is_training=...)` for `data.build_input_fn(preprocess_fn=...)` and the export."""
    return functools.partial(preprocess_image, image_size=image_size, rotation_degrees=rotation_degrees)


# ----------------------------------------------------------------------------- learning rate

class PlateauState(tf.Module):
    """Learning-rate scale and best validation loss of the plateau decay (checkpointed)."""

    def __init__(self):
        super().__init__(name='plateau')
        self.scale = tf.Variable(1.0, trainable=False, dtype=tf.float32, name='scale')
        self.best_loss = tf.Variable(math.inf, trainable=False, dtype=tf.float32, name='best_loss')
        self.num_decays = tf.Variable(0, trainable=False, dtype=tf.int64, name='num_decays')

    def update(self, loss: float, factor: float = PLATEAU_FACTOR) -> bool:
        """Records one epoch's validation loss; scales the rate by `factor` unless it improved.

        Returns whether the rate was decayed.
        """
        # Compared in float32, the precision the best loss is stored in.
        if np.float32(loss) < self.best_loss.numpy():
            self.best_loss.assign(loss)
            return False
        self.scale.assign(self.scale * factor)
        self.num_decays.assign_add(1)
        return True


class ConstantLearningRate(tf_keras.optimizers.schedules.LearningRateSchedule):
    """`learning_rate` x the plateau scale (1 without plateau decay), whatever the step."""

    def __init__(self, learning_rate: float, plateau: Optional[PlateauState] = None):
        super().__init__()
        self.learning_rate = learning_rate
        self.plateau = plateau

    def __call__(self, step):
        rate = tf.constant(self.learning_rate, tf.float32)
        if self.plateau is not None:
            rate = rate * self.plateau.scale
        return rate

    def get_config(self):
        return {'learning_rate': self.learning_rate}
