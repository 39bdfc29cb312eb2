"""ResNet v1 backbone of SimCLR (post-activation, stride on the 3x3 conv), with SK and SE options.

The layer structure mirrors google-research/simclr `tf2/resnet.py` closely enough that the
object-based checkpoint paths are identical (e.g.
`resnet_model/block_groups/0/layers/0/conv_relu_dropblock_layers/3/conv2d/kernel`), so
checkpoints written by the original restore into this port and vice versa. Every option is an
explicit constructor argument; nothing reads absl flags.
"""
import dataclasses
from typing import Dict, List, Optional, Union

import tensorflow as tf
import tf_keras

BATCH_NORM_DECAY = 0.9
BATCH_NORM_EPSILON = 1e-5

# depth -> (block type, blocks per group)
RESNET_DEPTHS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}

ENDPOINT_NAMES = ('initial_conv', 'initial_max_pool', 'block_group1', 'block_group2',
                  'block_group3', 'block_group4', 'final_avg_pool')


@dataclasses.dataclass(frozen=True)
class BatchNormConfig:
    """How every BatchNorm of the model is built.

    Attributes:
      global_bn: synchronise batch statistics across replicas (the original's default).
      momentum: moving-average momentum (`batch_norm_decay` in the original).
      epsilon: variance epsilon.
    """
    global_bn: bool = True
    momentum: float = BATCH_NORM_DECAY
    epsilon: float = BATCH_NORM_EPSILON


def make_batch_norm(config: BatchNormConfig, center: bool = True, scale: bool = True,
                    init_zero: bool = False) -> tf_keras.layers.BatchNormalization:
    """Returns the BatchNorm layer used everywhere in the model (the single place that picks it).

    `global_bn` gives the synchronised variant (statistics over the global batch, as the
    original's SyncBatchNormalization) when the strategy in scope at construction has more than
    one replica. With one replica the global batch is the local batch, so synchronising changes
    nothing but the cost: Keras' synchronised BN (like the original's, and like the original's
    non-global BN) computes the moments with a chain of separate reductions, while the fused
    kernel does normalisation and statistics in one op (about a tenth of ResNet-50's CPU step).
    So every non-synchronised BN lets Keras use the fused kernel where it can (4-D inputs; the
    projection head's 2-D BNs stay non-fused), with the moving variance updated from the biased
    batch variance as before (see below), so outputs and statistics are the same numbers.
    A layer's variables belong to the strategy in whose scope they are created, so the replica
    count at construction is the one it runs with. Both variants' variable names contain
    `batch_normalization`, which LARS relies on.
    """
    gamma_initializer = 'zeros' if init_zero else 'ones'
    kwargs = dict(axis=-1, momentum=config.momentum, epsilon=config.epsilon, center=center,
                  scale=scale, gamma_initializer=gamma_initializer)
    if config.global_bn and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        return tf_keras.layers.BatchNormalization(synchronized=True, **kwargs)
    layer = tf_keras.layers.BatchNormalization(**kwargs)
    # Keras' fused path would otherwise put the kernel's unbiased (n/(n-1)) batch variance into
    # the moving variance, unlike the original's and Keras' own non-fused BN (biased variance);
    # this is Keras' switch for removing that correction around the fused update.
    layer._bessels_correction_test_only = False  # pylint: disable=protected-access
    return layer


def conv_initializer() -> tf_keras.initializers.Initializer:
    """The original's conv init: VarianceScaling(scale=1, fan_in, truncated normal), not He-2."""
    return tf_keras.initializers.VarianceScaling()


class BatchNormRelu(tf_keras.layers.Layer):
    """BatchNorm (attribute `bn`, as in the original's checkpoints) optionally followed by ReLU."""

    def __init__(self, bn_config: BatchNormConfig, relu: bool = True, init_zero: bool = False,
                 center: bool = True, scale: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.relu = relu
        self.bn = make_batch_norm(bn_config, center=center, scale=scale, init_zero=init_zero)

    def call(self, inputs, training=None):
        outputs = self.bn(inputs, training=training)
        return tf.nn.relu(outputs) if self.relu else outputs


class FixedPadding(tf_keras.layers.Layer):
    """Symmetric explicit padding (total k-1, begin (k-1)//2) so strided convs ignore input size."""

    def __init__(self, kernel_size: int, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = kernel_size

    def call(self, inputs, training=None):
        pad_total = self.kernel_size - 1
        pad_beg = pad_total // 2
        pad_end = pad_total - pad_beg
        return tf.pad(inputs, [[0, 0], [pad_beg, pad_end], [pad_beg, pad_end], [0, 0]])


@tf.custom_gradient
def same_conv_stride1(inputs, kernel):
    """`tf.nn.conv2d(inputs, kernel, 1, 'SAME')` for an odd kernel, with the input gradient
    computed as a forward convolution of the upstream gradient with the kernel flipped in space
    and transposed in channels (the same sums, in another order).

    Why: TensorFlow's CPU Conv2DBackpropInput takes 20-70x a forward convolution of the same size
    at 2x2-3x3 spatial size and 256-512 channels (ResNet block group 4 at 64-96 px input, measured
    with TF 2.21), most of a ResNet-18 training step at those sizes; the forward kernel has no such
    cliff (docs/performance.md). The kernel gradient is TensorFlow's own.
    """
    outputs = tf.nn.conv2d(inputs, kernel, 1, 'SAME')

    def grad(upstream):
        flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
        d_inputs = tf.nn.conv2d(upstream, flipped, 1, 'SAME')
        d_kernel = tf.compat.v1.nn.conv2d_backprop_filter(inputs, tf.shape(kernel), upstream,
                                                          [1, 1, 1, 1], 'SAME')
        return d_inputs, d_kernel

    return outputs, grad


class Conv2dFixedPadding(tf_keras.layers.Layer):
    """Bias-free conv: SAME padding at stride 1, explicit fixed padding + VALID when strided.

    Stride-1 convolutions run through `same_conv_stride1` on the Keras layer's own kernel (same
    variable and checkpoint path, faster backward pass on CPU)."""

    def __init__(self, filters: int, kernel_size: int, strides: int, **kwargs):
        super().__init__(**kwargs)
        self.fixed_padding = FixedPadding(kernel_size) if strides > 1 else None
        self.conv2d = tf_keras.layers.Conv2D(
            filters=filters, kernel_size=kernel_size, strides=strides,
            padding='same' if strides == 1 else 'valid', use_bias=False,
            kernel_initializer=conv_initializer())

    def call(self, inputs, training=None):
        if self.fixed_padding is not None:
            inputs = self.fixed_padding(inputs)
            return self.conv2d(inputs)
        if not self.conv2d.built:
            self.conv2d.build(inputs.shape)
        return same_conv_stride1(inputs, tf.cast(self.conv2d.kernel, inputs.dtype))


class IdentityLayer(tf_keras.layers.Layer):
    """Variable-less pass-through layer."""

    def call(self, inputs, training=None):
        return tf.identity(inputs)


class Endpoint(IdentityLayer):
    """Marks a named intermediate tensor (e.g. `initial_conv`) that the backbone can return."""


class DisabledDropBlock(IdentityLayer):
    """Stands where the original keeps its (never enabled) DropBlock layers.

    The original's bottleneck list `conv_relu_dropblock_layers` has variable-less DropBlock
    entries after each BN. Object-based checkpoints address list entries by index, so without
    these slots our conv/BN objects would sit at 0,1,2,3,... instead of the original's
    0,1,3,4,6,7 and the checkpoints would not be interchangeable. DropBlock itself is left out:
    it is disabled in the original (keep_prob=None) and would crash if enabled (TF1 APIs).
    """


class SKConv2D(tf_keras.layers.Layer):
    """Selective-kernel 3x3 conv (arXiv:1903.06586): two streams mixed by a softmax attention."""

    def __init__(self, filters: int, strides: int, sk_ratio: float, bn_config: BatchNormConfig,
                 min_dim: int = 32, **kwargs):
        super().__init__(**kwargs)
        # Attribute names are the original's checkpoint names.
        self.conv2d_fixed_padding = Conv2dFixedPadding(2 * filters, 3, strides)
        self.batch_norm_relu = BatchNormRelu(bn_config)
        mid_dim = max(int(filters * sk_ratio), min_dim)
        self.conv2d_0 = tf_keras.layers.Conv2D(mid_dim, 1, use_bias=False,
                                               kernel_initializer=conv_initializer())
        self.batch_norm_relu_1 = BatchNormRelu(bn_config)
        self.conv2d_1 = tf_keras.layers.Conv2D(2 * filters, 1, use_bias=False,
                                               kernel_initializer=conv_initializer())

    def call(self, inputs, training=None):
        streams = self.conv2d_fixed_padding(inputs, training=training)
        streams = self.batch_norm_relu(streams, training=training)
        streams = tf.stack(tf.split(streams, 2, axis=-1))  # (2, B, H, W, f)
        global_features = tf.reduce_mean(tf.reduce_sum(streams, axis=0), [1, 2], keepdims=True)
        global_features = self.conv2d_0(global_features)
        global_features = self.batch_norm_relu_1(global_features, training=training)
        mixing = self.conv2d_1(global_features)
        mixing = tf.nn.softmax(tf.stack(tf.split(mixing, 2, axis=-1)), axis=0)
        return tf.reduce_sum(streams * mixing, axis=0)


class SELayer(tf_keras.layers.Layer):
    """Squeeze-and-excitation gate (arXiv:1709.01507) with biased 1x1 convs."""

    def __init__(self, filters: int, se_ratio: float, **kwargs):
        super().__init__(**kwargs)
        self.se_reduce = tf_keras.layers.Conv2D(
            max(1, int(filters * se_ratio)), 1, padding='same', use_bias=True,
            kernel_initializer=conv_initializer())

    def build(self, input_shape):
        # The expansion width is the input's channel count, known only here.
        self.se_expand = tf_keras.layers.Conv2D(
            int(input_shape[-1]), 1, padding='same', use_bias=True,
            kernel_initializer=conv_initializer())
        super().build(input_shape)

    def call(self, inputs, training=None):
        squeezed = tf.reduce_mean(inputs, [1, 2], keepdims=True)
        gate = self.se_expand(tf.nn.relu(self.se_reduce(squeezed)))
        return tf.sigmoid(gate) * inputs


def _shortcut_layers(filters_out: int, strides: int, sk_ratio: float,
                     bn_config: BatchNormConfig) -> List[tf_keras.layers.Layer]:
    """Projection shortcut: 1x1/s conv + BN, or ResNet-D (avg-pool then 1x1/1 conv) with SK."""
    layers = []
    if sk_ratio > 0:
        if strides > 1:
            layers.append(FixedPadding(2))
        layers.append(tf_keras.layers.AveragePooling2D(
            pool_size=2, strides=strides, padding='same' if strides == 1 else 'valid'))
        layers.append(Conv2dFixedPadding(filters_out, 1, 1))
    else:
        layers.append(Conv2dFixedPadding(filters_out, 1, strides))
    layers.append(BatchNormRelu(bn_config, relu=False))
    return layers


class ResidualBlock(tf_keras.layers.Layer):
    """Basic block (ResNet-18/34): 3x3/s conv-BN-ReLU, 3x3 conv-BN(gamma 0), add, ReLU."""

    def __init__(self, filters: int, strides: int, use_projection: bool, sk_ratio: float,
                 se_ratio: float, bn_config: BatchNormConfig, **kwargs):
        super().__init__(**kwargs)
        self.shortcut_layers = (_shortcut_layers(filters, strides, sk_ratio, bn_config)
                                if use_projection else [])
        self.conv2d_bn_layers = [
            Conv2dFixedPadding(filters, 3, strides),
            BatchNormRelu(bn_config),
            Conv2dFixedPadding(filters, 3, 1),
            BatchNormRelu(bn_config, relu=False, init_zero=True),
        ]
        self.se_layer = SELayer(filters, se_ratio) if se_ratio > 0 else None

    def call(self, inputs, training=None):
        shortcut = inputs
        for layer in self.shortcut_layers:
            shortcut = layer(shortcut, training=training)
        for layer in self.conv2d_bn_layers:
            inputs = layer(inputs, training=training)
        if self.se_layer is not None:
            inputs = self.se_layer(inputs, training=training)
        return tf.nn.relu(inputs + shortcut)


class BottleneckBlock(tf_keras.layers.Layer):
    """Bottleneck block: 1x1 -> 3x3/s (or SK) -> 1x1 (4f, BN gamma 0) [-> SE], add, ReLU."""

    def __init__(self, filters: int, strides: int, use_projection: bool, sk_ratio: float,
                 se_ratio: float, bn_config: BatchNormConfig, **kwargs):
        super().__init__(**kwargs)
        self.projection_layers = (_shortcut_layers(4 * filters, strides, sk_ratio, bn_config)
                                  if use_projection else [])
        layers = [Conv2dFixedPadding(filters, 1, 1), BatchNormRelu(bn_config),
                  DisabledDropBlock()]
        if sk_ratio > 0:
            layers.append(SKConv2D(filters, strides, sk_ratio, bn_config))
        else:
            layers += [Conv2dFixedPadding(filters, 3, strides), BatchNormRelu(bn_config)]
        layers += [DisabledDropBlock(), Conv2dFixedPadding(4 * filters, 1, 1),
                   BatchNormRelu(bn_config, relu=False, init_zero=True), DisabledDropBlock()]
        if se_ratio > 0:
            layers.append(SELayer(filters, se_ratio))
        self.conv_relu_dropblock_layers = layers

    def call(self, inputs, training=None):
        shortcut = inputs
        for layer in self.projection_layers:
            shortcut = layer(shortcut, training=training)
        for layer in self.conv_relu_dropblock_layers:
            inputs = layer(inputs, training=training)
        return tf.nn.relu(inputs + shortcut)


class BlockGroup(tf_keras.layers.Layer):
    """A residual stage: the first block projects the shortcut and carries the stride."""

    def __init__(self, filters: int, block_type: str, num_blocks: int, strides: int,
                 sk_ratio: float, se_ratio: float, bn_config: BatchNormConfig, **kwargs):
        super().__init__(**kwargs)
        block_cls = ResidualBlock if block_type == 'basic' else BottleneckBlock
        self.layers = [
            block_cls(filters, strides if i == 0 else 1, use_projection=(i == 0),
                      sk_ratio=sk_ratio, se_ratio=se_ratio, bn_config=bn_config)
            for i in range(num_blocks)]

    def call(self, inputs, training=None):
        for layer in self.layers:
            inputs = layer(inputs, training=training)
        return inputs


def _stem_layers(width_multiplier: int, cifar_stem: bool, sk_ratio: float,
                 bn_config: BatchNormConfig, trainable: bool) -> List[tf_keras.layers.Layer]:
    """The stem list `initial_conv_relu_max_pool` (indices matter for checkpoints)."""
    filters = 64 * width_multiplier
    if cifar_stem:
        return [Conv2dFixedPadding(filters, 3, 1, trainable=trainable),
                Endpoint(name='initial_conv', trainable=trainable),
                BatchNormRelu(bn_config, trainable=trainable),
                Endpoint(name='initial_max_pool', trainable=trainable)]
    if sk_ratio > 0:  # ResNet-D deep stem
        layers = [Conv2dFixedPadding(filters // 2, 3, 2, trainable=trainable),
                  BatchNormRelu(bn_config, trainable=trainable),
                  Conv2dFixedPadding(filters // 2, 3, 1, trainable=trainable),
                  BatchNormRelu(bn_config, trainable=trainable),
                  Conv2dFixedPadding(filters, 3, 1, trainable=trainable)]
    else:
        layers = [Conv2dFixedPadding(filters, 7, 2, trainable=trainable)]
    return layers + [
        Endpoint(name='initial_conv', trainable=trainable),
        BatchNormRelu(bn_config, trainable=trainable),
        tf_keras.layers.MaxPooling2D(pool_size=3, strides=2, padding='same', trainable=trainable),
        Endpoint(name='initial_max_pool', trainable=trainable)]


class ResNet(tf_keras.layers.Layer):
    """SimCLR's ResNet v1 backbone; returns the globally average-pooled features.

    Args:
      resnet_depth: 18, 34, 50, 101, 152 or 200.
      width_multiplier: integer channel multiplier.
      cifar_stem: 3x3/1 stem without max-pool (the original uses it when image_size <= 32).
      sk_ratio: > 0 enables selective-kernel convs plus the ResNet-D stem and shortcuts.
      se_ratio: > 0 adds squeeze-and-excitation to every block.
      fine_tune_after_block: -1 trains everything; k in 0..4 builds the stem and block groups
        1..k with trainable=False and stops gradients at the input of group k+1 (before the
        average pool for k=4). Only meaningful for fine-tuning; pass -1 otherwise.
      global_bn, batch_norm_decay, batch_norm_epsilon: BatchNorm settings (see BatchNormConfig).

    Frozen layers are frozen completely, BatchNorm included: their BN layers run in inference
    mode (moving statistics, no updates) even when training=True, which is what linear
    evaluation on frozen features means and what the spec describes. The TF2 original passes
    `trainable=False` only to the containers, so its inner BN layers keep normalising with batch
    statistics and drifting their moving averages during linear evaluation; this port fixes that.
    """

    def __init__(self, resnet_depth: int = 50, width_multiplier: int = 1,
                 cifar_stem: bool = False, sk_ratio: float = 0.0, se_ratio: float = 0.0,
                 fine_tune_after_block: int = -1, global_bn: bool = True,
                 batch_norm_decay: float = BATCH_NORM_DECAY,
                 batch_norm_epsilon: float = BATCH_NORM_EPSILON, name: str = 'resnet', **kwargs):
        super().__init__(name=name, **kwargs)
        _validate_args(resnet_depth, width_multiplier, sk_ratio, se_ratio, fine_tune_after_block)
        block_type, blocks = RESNET_DEPTHS[resnet_depth]
        self.block_type = block_type
        self.fine_tune_after_block = fine_tune_after_block
        self.output_dim = (512 if block_type == 'basic' else 2048) * width_multiplier
        bn_config = BatchNormConfig(global_bn, batch_norm_decay, batch_norm_epsilon)
        frozen = fine_tune_after_block
        self.initial_conv_relu_max_pool = _stem_layers(
            width_multiplier, cifar_stem, sk_ratio, bn_config, trainable=frozen == -1)
        self.block_groups = [
            BlockGroup(64 * width_multiplier * 2**i, block_type, blocks[i], 1 if i == 0 else 2,
                       sk_ratio, se_ratio, bn_config, name=f'block_group{i + 1}',
                       trainable=frozen == -1 or i >= frozen)
            for i in range(4)]
        # The setter (unlike the constructor argument) propagates to the nested BN layers.
        for layer in self.initial_conv_relu_max_pool + self.block_groups:
            if not layer.trainable:
                layer.trainable = False

    def call(self, inputs, training=None, return_endpoints: bool = False
             ) -> Union[tf.Tensor, Dict[str, tf.Tensor]]:
        """Runs the backbone.

        Returns the (B, output_dim) pooled features, or with `return_endpoints=True` a dict of
        the named tensors in ENDPOINT_NAMES (`final_avg_pool` being the features).
        """
        endpoints = {}
        for layer in self.initial_conv_relu_max_pool:
            inputs = layer(inputs, training=training)
            if isinstance(layer, Endpoint):
                endpoints[layer.name] = inputs
        for i, group in enumerate(self.block_groups):
            if self.fine_tune_after_block == i:
                inputs = tf.stop_gradient(inputs)
            inputs = group(inputs, training=training)
            endpoints[f'block_group{i + 1}'] = inputs
        if self.fine_tune_after_block == 4:
            inputs = tf.stop_gradient(inputs)
        features = tf.reduce_mean(inputs, [1, 2])
        endpoints['final_avg_pool'] = features
        return endpoints if return_endpoints else features


def _validate_args(resnet_depth: int, width_multiplier: int, sk_ratio: float, se_ratio: float,
                   fine_tune_after_block: int) -> None:
    if resnet_depth not in RESNET_DEPTHS:
        raise ValueError(f'resnet_depth={resnet_depth} is not supported; '
                         f'use one of {sorted(RESNET_DEPTHS)}.')
    if not isinstance(width_multiplier, int) or width_multiplier < 1:
        raise ValueError(f'width_multiplier must be a positive integer, got {width_multiplier!r}.')
    if sk_ratio < 0 or se_ratio < 0:
        raise ValueError(f'sk_ratio and se_ratio must be >= 0, got {sk_ratio} and {se_ratio}.')
    if fine_tune_after_block not in (-1, 0, 1, 2, 3, 4):
        raise ValueError(f'fine_tune_after_block must be in -1..4, got {fine_tune_after_block}.')


def resnet(resnet_depth: int, width_multiplier: int = 1, cifar_stem: bool = False,
           sk_ratio: float = 0.0, se_ratio: float = 0.0, fine_tune_after_block: int = -1,
           global_bn: bool = True, batch_norm_decay: float = BATCH_NORM_DECAY,
           batch_norm_epsilon: float = BATCH_NORM_EPSILON,
           name: Optional[str] = 'resnet') -> ResNet:
    """Builds the backbone (same arguments as ResNet)."""
    return ResNet(resnet_depth=resnet_depth, width_multiplier=width_multiplier,
                  cifar_stem=cifar_stem, sk_ratio=sk_ratio, se_ratio=se_ratio,
                  fine_tune_after_block=fine_tune_after_block, global_bn=global_bn,
                  batch_norm_decay=batch_norm_decay, batch_norm_epsilon=batch_norm_epsilon,
                  name=name)
