"""Where the port's pretraining step spends its time, part by part, against the Keras floor.

  python benchmarks/profile_step.py [--depth 50] [--image_size 224] [--batch 4] [--steps 6]
      [--quick] [--json FILE]

Each part is its own compiled function, timed interleaved with the others in one process (as in
bench_step.py), so differences between parts are the cost of what one part adds to another:
* keras_floor, floor_forward, floor_grads: the plain tf_keras ResNet + Dense step of bench_step.py
  (forward + backward + SGD), its forward alone, its forward + backward without the update.
* port_step: `train.Trainer`'s compiled loop, one step (what bench_step.py times).
* port_grads: the loop's compute function (forward with blur, projection and linear-eval heads,
  the losses, backward) under the same strategy, without the optimizer and metric updates.
* port_forward: the two-view model's forward pass alone (training mode, blur included).
* port_backbone_grads: the ResNet backbone + Dense + cross-entropy forward and backward with no
  strategy, blur or heads: the port's backbone against floor_grads.
* port_apply: the optimizer update (LARS by default) with fixed gradients, under the strategy.
* blur: the batch Gaussian blur of both views alone.
So port_step - port_grads is the update + metrics + loop cost, port_grads - port_forward the
backward pass, port_backbone_grads - floor_grads the backbone implementation's own overhead.
"""
import argparse
import json
import os
import sys
from typing import List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

import bench_step  # noqa: E402
from bench_step import Variant  # noqa: E402
from simclr_mura import data as data_lib  # noqa: E402
from simclr_mura import data_util  # noqa: E402
from simclr_mura import resnet  # noqa: E402
from simclr_mura import train as train_lib  # noqa: E402
from simclr_mura.config import Config  # noqa: E402


def _timed(name: str, images: int, fn, note: str) -> Variant:
    def step():
        result = fn()
        return float(tf.reduce_sum(tf.nest.flatten(result)[0]).numpy())
    return Variant(name, images, step, note)


def floor_parts(depth: int, image_size: int, num_images: int) -> List[Variant]:
    """The floor's forward alone and forward + backward without the update."""
    full = bench_step.floor_variant('keras_floor', depth, image_size, num_images, jit_compile=False)
    backbone = (getattr(tf_keras.applications, bench_step.KERAS_APPS[depth])(
        weights=None, include_top=False, pooling='avg', input_shape=(image_size, image_size, 3))
        if depth in bench_step.KERAS_APPS else bench_step._basic_resnet(depth, image_size))  # pylint: disable=protected-access
    model = tf_keras.Sequential([backbone, tf_keras.layers.Dense(data_lib.NUM_CLASSES)])
    images, targets = bench_step._port_inputs(num_images, image_size, 3, seed=1)  # pylint: disable=protected-access
    images, labels = tf.constant(images), tf.constant(targets['label'])

    @tf.function
    def forward():
        return model(images, training=True)

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(
                labels=labels, logits=model(images, training=True)))
        return tape.gradient(loss, model.trainable_variables)

    return [full, _timed('floor_forward', num_images, forward, 'floor forward only'),
            _timed('floor_grads', num_images, grads, 'floor forward + backward, no update')]


def port_parts(config: Config, strategy) -> List[Variant]:
    """The port's step and its parts (see the module docstring)."""
    variant, trainer = bench_step.port_variant('port_step', config, strategy, return_trainer=True)
    model, optimizer = trainer.model, trainer.optimizer
    per_replica = config.train_batch_size // strategy.num_replicas_in_sync
    images, targets = bench_step._port_inputs(per_replica, config.image_size, 6, seed=0)  # pylint: disable=protected-access
    images = tf.constant(images)
    targets = tf.nest.map_structure(tf.constant, targets)
    compute = trainer._compute  # pylint: disable=protected-access
    num_images = 2 * config.train_batch_size

    @tf.function
    def grads():
        return strategy.run(lambda x, t: compute(x, t)[0], (images, targets))

    @tf.function
    def forward():
        return strategy.run(lambda x: model(x, training=True)[0], (images,))

    fixed_grads = [tf.constant(np.random.default_rng(2).normal(0, 1e-3, v.shape), v.dtype)
                   for v in model.trainable_variables]

    @tf.function
    def apply():
        def update():
            optimizer.apply_gradients(zip(fixed_grads, model.trainable_variables))
            return optimizer.iterations
        return strategy.run(update)

    views = tf.split(images, 2, axis=-1)

    @tf.function
    def blur():
        return data_util.batch_random_blur(views, config.image_size, config.image_size)

    return [variant,
            _timed('port_grads', num_images, grads, 'forward + losses + backward, no update'),
            _timed('port_forward', num_images, forward, 'two-view forward (blur, heads)'),
            _timed('port_apply', num_images, apply, f'{config.optimizer} update, fixed gradients'),
            _timed('blur', num_images, blur, 'batch blur of both views')]


def backbone_part(config: Config, num_images: int) -> Variant:
    """The port's ResNet + Dense + cross-entropy forward and backward, no strategy."""
    backbone = resnet.resnet(config.resnet_depth, config.width_multiplier,
                             cifar_stem=config.image_size <= 32, global_bn=config.global_bn)
    head = tf_keras.layers.Dense(data_lib.NUM_CLASSES)
    images, targets = bench_step._port_inputs(num_images, config.image_size, 3, seed=1)  # pylint: disable=protected-access
    images, labels = tf.constant(images), tf.constant(targets['label'])

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            logits = head(backbone(images, training=True))
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels,
                                                                          logits=logits))
        return tape.gradient(loss, backbone.trainable_variables + head.trainable_variables)

    return _timed('port_backbone_grads', num_images, grads, 'port ResNet + Dense fwd/bwd, no strategy')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--depth', type=int)
    parser.add_argument('--image_size', type=int)
    parser.add_argument('--batch', type=int, default=4, help='two-view pairs')
    parser.add_argument('--steps', type=int)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--quick', action='store_true', help='ResNet-18 at 64 px, 4 steps')
    parser.add_argument('--json')
    args = parser.parse_args(argv)
    defaults = {'depth': 18, 'image_size': 64, 'steps': 4} if args.quick else {
        'depth': 50, 'image_size': 224, 'steps': 6}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    config = Config(resnet_depth=args.depth, image_size=args.image_size, train_batch_size=args.batch)
    train_lib.configure_runtime(config)
    strategy = train_lib.make_strategy(config)
    num_images = 2 * args.batch
    variants = (floor_parts(args.depth, args.image_size, num_images) + port_parts(config, strategy)
                + [backbone_part(config, num_images)])
    print(f'profile_step: ResNet-{args.depth}, {args.image_size} px, {num_images} images; '
          f'load average {os.getloadavg()[0]:.2f}', flush=True)
    bench_step.run_rounds(variants, args.steps, args.warmup)
    results = bench_step.summarise(variants)
    bench_step.print_table(results, f'profile_step: median of {args.steps} interleaved rounds')
    print(f'  load average after {os.getloadavg()[0]:.2f}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'settings': vars(args), 'results': results}, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
