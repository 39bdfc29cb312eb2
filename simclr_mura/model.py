"""SimCLR model: ResNet backbone, projection head, supervised head, and weight decay.

Ports google-research/simclr `tf2/model.py` (heads and the two-view `Model`) with explicit
arguments instead of absl flags, and with the original's head bugs fixed:
`proj_head_mode='linear'` and `'none'` work, and `zero_init_logits_layer` really zeroes the
supervised head (also when restoring a checkpoint whose head has another class count, see
`checkpoints.initialize_from_checkpoint`). Checkpoint object paths are identical to the original's.
"""
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
import tf_keras

from simclr_mura import data_util
from simclr_mura import lars_optimizer
from simclr_mura import resnet
from simclr_mura.config import OPTIMIZERS, PROJ_HEAD_MODES, SIMCLR_TRAIN_MODES
from simclr_mura.schedule import WarmUpAndCosineDecay, get_train_steps  # noqa: F401

# Variables LARS neither decays nor scales by the trust ratio (the original's `build_optimizer`).
LARS_EXCLUDE = ('batch_normalization', 'bias', 'head_supervised')


def _dense_initializer(zero_init: bool) -> tf_keras.initializers.Initializer:
    if zero_init:
        return tf_keras.initializers.Zeros()
    return tf_keras.initializers.RandomNormal(stddev=0.01)


class LinearLayer(tf_keras.layers.Layer):
    """Dense layer, optionally followed by BatchNorm (attributes `dense` and `bn_relu`).

    With BN the Dense has no bias; `use_bias` then decides whether the BN has a beta (center),
    so the BN beta plays the role of the bias, as in the original.

    Args:
      num_classes: output width, or None for "same as the input width" (known at build).
      use_bias: Dense bias without BN, BN center with BN.
      use_bn: add BatchNorm (no ReLU; the projection head applies it).
      zero_init: initialise the Dense kernel with zeros instead of N(0, 0.01).
      bn_config: BatchNorm settings.
    """

    def __init__(self, num_classes: Optional[int], use_bias: bool = True, use_bn: bool = False,
                 zero_init: bool = False, bn_config: Optional[resnet.BatchNormConfig] = None,
                 name: str = 'linear_layer', **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.use_bias = use_bias
        self.use_bn = use_bn
        self.zero_init = zero_init
        if use_bn:
            self.bn_relu = resnet.BatchNormRelu(bn_config or resnet.BatchNormConfig(),
                                                relu=False, center=use_bias)

    def build(self, input_shape):
        # The Dense is created here because the middle projection layers take their width from
        # the input (Keras rejects a placeholder width at construction).
        units = self.num_classes or int(input_shape[-1])
        self.dense = tf_keras.layers.Dense(
            units, use_bias=self.use_bias and not self.use_bn,
            kernel_initializer=_dense_initializer(self.zero_init), bias_initializer='zeros')
        super().build(input_shape)

    def call(self, inputs, training=None):
        if inputs.shape.rank != 2:
            raise ValueError(f'LinearLayer expects (batch, features) inputs, got {inputs.shape}.')
        outputs = self.dense(inputs)
        if self.use_bn:
            outputs = self.bn_relu(outputs, training=training)
        return outputs


class ProjectionHead(tf_keras.layers.Layer):
    """SimCLR projection head; call returns (proj_output, hiddens_list[ft_proj_selector]).

    hiddens_list = [head input, ReLU(layer 0), ..., ReLU(layer L-2), layer L-1 output].
    `nonlinear`: L layers, middle ones Dense(no bias) -> BN(center) -> ReLU, the last
    Dense(no bias, proj_out_dim) -> BN(no center). `linear`: one Dense -> BN(no center).
    `none`: identity (proj_output is the input).
    """

    def __init__(self, proj_head_mode: str = 'nonlinear', num_proj_layers: int = 3,
                 proj_out_dim: int = 128, ft_proj_selector: int = 0,
                 bn_config: Optional[resnet.BatchNormConfig] = None,
                 name: str = 'projection_head', **kwargs):
        super().__init__(name=name, **kwargs)
        if proj_head_mode not in PROJ_HEAD_MODES:
            raise ValueError(f'proj_head_mode={proj_head_mode!r}; use one of {PROJ_HEAD_MODES}.')
        if proj_head_mode == 'nonlinear' and num_proj_layers < 1:
            raise ValueError(f'num_proj_layers must be >= 1 for a nonlinear head, '
                             f'got {num_proj_layers}.')
        bn_config = bn_config or resnet.BatchNormConfig()
        num_layers = {'none': 0, 'linear': 1, 'nonlinear': num_proj_layers}[proj_head_mode]
        if not -(num_layers + 1) <= ft_proj_selector <= num_layers:
            raise ValueError(f'ft_proj_selector={ft_proj_selector} is out of range for a head '
                             f'with {num_layers} layer(s): use -{num_layers + 1}..{num_layers}.')
        self.proj_head_mode = proj_head_mode
        self.proj_out_dim = proj_out_dim
        self.ft_proj_selector = ft_proj_selector
        self.num_layers = num_layers
        self.linear_layers = []
        for j in range(num_layers):
            last = j == num_layers - 1
            prefix = 'l' if proj_head_mode == 'linear' else 'nl'
            self.linear_layers.append(LinearLayer(
                proj_out_dim if last else None, use_bias=not last, use_bn=True,
                bn_config=bn_config, name=f'{prefix}_{j}'))

    def hidden_dims(self, input_dim: int) -> List[int]:
        """Widths of hiddens_list for a given head-input width."""
        if not self.num_layers:
            return [input_dim]
        # The input and the middle layers keep the width; the last layer has proj_out_dim.
        return [input_dim] * self.num_layers + [self.proj_out_dim]

    def call(self, inputs, training=None, return_endpoints: bool = False):
        """Returns (proj_output, selected hidden), plus an endpoint dict if requested."""
        hiddens_list = [inputs]
        endpoints = {'proj_head_input': inputs}
        for j, layer in enumerate(self.linear_layers):
            hiddens = layer(hiddens_list[-1], training=training)
            endpoints[f'proj_head_layer{j}_output'] = hiddens
            if j != self.num_layers - 1:
                hiddens = tf.nn.relu(hiddens)
            hiddens_list.append(hiddens)
        endpoints['proj_head_output'] = hiddens_list[-1]
        outputs = (hiddens_list[-1], hiddens_list[self.ft_proj_selector])
        return outputs + (endpoints,) if return_endpoints else outputs


class SupervisedHead(tf_keras.layers.Layer):
    """Linear classifier (Dense with bias; kernel N(0, 0.01) or zeros, bias zeros).

    Variables are named `head_supervised/...`, which LARS uses to exclude them.
    """

    def __init__(self, num_classes: int, zero_init: bool = False, name: str = 'head_supervised',
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}.')
        self.num_classes = num_classes
        self.linear_layer = LinearLayer(num_classes, zero_init=zero_init)

    def zero_init(self) -> None:
        """Zeroes the kernel and bias now if built, and makes a later build start from zeros."""
        self.linear_layer.zero_init = True
        if self.linear_layer.built:
            for variable in self.linear_layer.dense.weights:
                variable.assign(tf.zeros_like(variable))

    def call(self, inputs, training=None):
        return self.linear_layer(inputs, training=training)


def view_channels(shape: tf.TensorShape) -> int:
    """Channels of each view in a model input of `shape` (B, H, W, C): 3 or 1 (rule in `Model`)."""
    channels = tf.TensorShape(shape)[-1]
    if channels is not None and channels > 0 and channels % 3 == 0:
        return 3
    if channels in (1, 2):
        return 1
    raise ValueError(f'The channel dimension must be static and a multiple of 3 (RGB views '
                     f'concatenated on channels) or 1 or 2 (grey views), got shape {shape}.')


class Model(tf_keras.Model):
    """The SimCLR model: views split on channels, stacked on the batch, ResNet, heads.

    Input (B, H, W, C), the views concatenated on channels: C a multiple of 3 is C / 3 RGB views;
    C = 1 or 2 is that many grey (1-channel) views, as the input pipeline yields MURA's
    radiographs (`data` docstring). A grey view is tiled to RGB on the device after the blur and
    before the ResNet; the blur is depthwise (per channel), so this equals blurring the tiled view
    bit for bit (tests/test_model.py), on a third of the data. Any other C is a ValueError.
    Outputs of call(inputs, training):
      finetune: (None, logits); pretrain + linear eval: (proj, logits of the head on
      stop_gradient features); pretrain without linear eval: (proj, None).
    Rows [0, B) of every output are view 1, [B, 2B) view 2, and so on.

    Args:
      num_classes: supervised-head width.
      train_mode: 'pretrain' or 'finetune'.
      lineareval_while_pretraining: add the stop-gradient supervised head when pretraining.
      image_size: input size; <= 32 selects the CIFAR stem; also sizes the blur kernel.
      use_blur: batch Gaussian blur of each view when training in pretrain mode.
      zero_init_logits_layer: start the supervised head from zeros.
      Others: see resnet.ResNet and ProjectionHead.
    """

    def __init__(self, num_classes: int, train_mode: str = 'pretrain',
                 lineareval_while_pretraining: bool = True, resnet_depth: int = 50,
                 width_multiplier: int = 1, sk_ratio: float = 0.0, se_ratio: float = 0.0,
                 image_size: int = 224, global_bn: bool = True,
                 batch_norm_decay: float = resnet.BATCH_NORM_DECAY,
                 proj_head_mode: str = 'nonlinear', proj_out_dim: int = 128,
                 num_proj_layers: int = 3, ft_proj_selector: int = 0,
                 fine_tune_after_block: int = -1, use_blur: bool = True,
                 zero_init_logits_layer: bool = False, **kwargs):
        super().__init__(**kwargs)
        if train_mode not in SIMCLR_TRAIN_MODES:
            raise ValueError(f'train_mode={train_mode!r}; use one of {SIMCLR_TRAIN_MODES}.')
        if fine_tune_after_block not in (-1, 0, 1, 2, 3, 4):
            raise ValueError(f'fine_tune_after_block must be in -1..4, '
                             f'got {fine_tune_after_block}.')
        self.train_mode = train_mode
        self.image_size = image_size
        self.use_blur = use_blur
        self.fine_tune_after_block = fine_tune_after_block
        self.lineareval_while_pretraining = lineareval_while_pretraining
        # Freezing only exists in fine-tuning, as in the original.
        self.resnet_model = resnet.resnet(
            resnet_depth, width_multiplier, cifar_stem=image_size <= 32, sk_ratio=sk_ratio,
            se_ratio=se_ratio,
            fine_tune_after_block=fine_tune_after_block if train_mode == 'finetune' else -1,
            global_bn=global_bn, batch_norm_decay=batch_norm_decay)
        bn_config = resnet.BatchNormConfig(global_bn, batch_norm_decay)
        self._projection_head = ProjectionHead(proj_head_mode, num_proj_layers, proj_out_dim,
                                               ft_proj_selector, bn_config)
        self.supervised_head = None
        if train_mode == 'finetune' or lineareval_while_pretraining:
            self.supervised_head = SupervisedHead(num_classes, zero_init=zero_init_logits_layer)

    @property
    def projection_head(self) -> ProjectionHead:
        """The projection head (stored as `_projection_head`, the original's checkpoint name)."""
        return self._projection_head

    def supervised_head_input_dim(self) -> int:
        """Width of the features fed to the supervised head (known without building)."""
        dims = self._projection_head.hidden_dims(self.resnet_model.output_dim)
        return dims[self._projection_head.ft_proj_selector]

    def call(self, inputs, training=None, blur_seed=None):
        """`blur_seed` ([2] int) fixes the pretraining blur; None draws one (see data_util)."""
        outputs, _ = self._forward(inputs, training, return_endpoints=False, blur_seed=blur_seed)
        return outputs

    def named_outputs(self, inputs, training: bool = False) -> Dict[str, tf.Tensor]:
        """All named tensors of a forward pass (for export and fidelity checks).

        Keys: initial_conv, initial_max_pool, block_group1..4, final_avg_pool, proj_head_input,
        proj_head_layer{j}_output (before the ReLU), proj_head_output, logits_sup (if the model
        has a supervised head).
        """
        _, endpoints = self._forward(inputs, training, return_endpoints=True)
        return endpoints

    def feature_map_outputs(self, inputs) -> Tuple[tf.Tensor, tf.Tensor]:
        """(the last block group's feature map [B, h, w, C], logits_sup) in inference mode: what a
        class activation map weighs (`gradcam.py`); needs a supervised head."""
        if self.supervised_head is None:
            raise ValueError('This model has no supervised head (a pretraining run without linear '
                             'evaluation): class activation maps need a classifier.')
        if view_channels(inputs.shape) == 1:
            inputs = tf.tile(inputs, [1, 1, 1, 3])
        # The head is applied here to the returned feature map (the pooling is the ResNet's own
        # mean), without the training-time stop_gradient of --fine_tune_after_block=4, so the
        # score's gradient reaches the map.
        feature_map = self.resnet_model(inputs, training=False, return_endpoints=True)['block_group4']
        _, head_input = self._projection_head(tf.reduce_mean(feature_map, [1, 2]), training=False)
        return feature_map, self.supervised_head(head_input, training=False)

    def _forward(self, inputs, training, return_endpoints: bool, blur_seed=None):
        training = bool(training)
        pretrain = self.train_mode == 'pretrain'
        if training and pretrain and self.fine_tune_after_block > -1:
            raise ValueError('Layer freezing is not supported during pretraining: set '
                             'fine_tune_after_block=-1 (or use train_mode="finetune").')
        per_view = view_channels(inputs.shape)
        views = tf.split(inputs, inputs.shape[-1] // per_view, axis=-1)
        if self.use_blur and training and pretrain:
            # In float32 whatever the compute dtype: under mixed_bfloat16 TensorFlow's CPU
            # depthwise convolution in bfloat16 takes minutes per 224 px batch, and an
            # augmentation has no reason to lose precision. (No-op casts in float32.)
            dtype = views[0].dtype
            views = data_util.batch_random_blur([tf.cast(v, tf.float32) for v in views],
                                                self.image_size, self.image_size, seed=blur_seed)
            views = [tf.cast(v, dtype) for v in views]
        features = tf.concat(views, 0)
        if per_view == 1:
            features = tf.tile(features, [1, 1, 1, 3])

        endpoints = self.resnet_model(features, training=training, return_endpoints=True)
        proj_output, sup_input, head_endpoints = self._projection_head(
            endpoints['final_avg_pool'], training=training, return_endpoints=True)
        endpoints.update(head_endpoints)
        if not return_endpoints:
            endpoints = None

        if self.train_mode == 'finetune':
            logits = self.supervised_head(sup_input, training=training)
            outputs = (None, logits)
        elif self.lineareval_while_pretraining:
            # Linear eval must not train the encoder.
            logits = self.supervised_head(tf.stop_gradient(sup_input), training=training)
            outputs = (proj_output, logits)
        else:
            outputs = (proj_output, None)
        if endpoints is not None and outputs[1] is not None:
            endpoints['logits_sup'] = outputs[1]
        return outputs, endpoints


def build_optimizer(optimizer_name: str, learning_rate, *, momentum: float = 0.9,
                    weight_decay: float = 0.) -> tf_keras.optimizers.Optimizer:
    """The original's `build_optimizer`: LARS (excluding `LARS_EXCLUDE`), SGD with Nesterov
    momentum, or Adam, with explicit arguments instead of flags."""
    if optimizer_name == 'lars':
        return lars_optimizer.LARSOptimizer(
            learning_rate, momentum=momentum, weight_decay=weight_decay,
            exclude_from_weight_decay=list(LARS_EXCLUDE))
    if optimizer_name == 'momentum':
        return tf_keras.optimizers.SGD(learning_rate, momentum, nesterov=True)
    if optimizer_name == 'adam':
        return tf_keras.optimizers.Adam(learning_rate)
    raise ValueError(f'optimizer_name={optimizer_name!r}; use one of {OPTIMIZERS}.')


def add_weight_decay(model: tf_keras.Model, optimizer_name: str,
                     weight_decay: float) -> tf.Tensor:
    """The weight-decay term added to the loss (the original's `add_weight_decay`).

    LARS applies weight decay itself, except to variables named `head_supervised`, so only the
    supervised head's non-bias kernels' l2_loss (sum(v^2)/2) is returned. For momentum and Adam
    it is the l2_loss of every trainable weight whose name lacks `batch_normalization`
    (biases and the supervised head included). A model with a `weight_decay_variables()` method
    (the DenseNet baseline) decays the variables it returns instead. Scaled by `weight_decay`.
    """
    if optimizer_name not in OPTIMIZERS:
        raise ValueError(f'optimizer_name={optimizer_name!r}; use one of {OPTIMIZERS}.')
    if hasattr(model, 'weight_decay_variables'):
        # Models whose batch-norm variables are not named `batch_normalization` (the Keras DenseNet
        # of the baseline) say themselves which variables are decayed.
        variables = model.weight_decay_variables()
    elif optimizer_name == 'lars':
        variables = [v for v in model.trainable_variables
                     if 'head_supervised' in v.name and 'bias' not in v.name]
    else:
        variables = [v for v in model.trainable_weights if 'batch_normalization' not in v.name]
    if not variables:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in variables])


def abnormal_log_odds(logits: tf.Tensor) -> tf.Tensor:
    """log(p / (1 - p)) of 'abnormal' per row, from the logits as `abnormal_probability` reads
    them: logits[:, 1] - logits[:, 0] for a 2-way head, the logit itself for a 1-logit head."""
    if logits.shape[-1] == 1:
        return logits[:, 0]
    return logits[:, 1] - logits[:, 0]


def abnormal_probability(logits: tf.Tensor) -> tf.Tensor:
    """Probability of 'abnormal' (class 1) per row: softmax(logits)[:, 1] for a 2-way head (SimCLR),
    sigmoid(logits[:, 0]) for a single-logit head (the DenseNet baseline). float32, shape [batch]."""
    logits = tf.cast(logits, tf.float32)
    if logits.shape[-1] == 1:
        return tf.sigmoid(logits[:, 0])
    if logits.shape[-1] == 2:
        return tf.nn.softmax(logits)[:, 1]
    raise ValueError(f'expected 1 (sigmoid) or 2 (softmax) logits per image, got shape {logits.shape}')
