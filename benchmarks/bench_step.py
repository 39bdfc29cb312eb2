"""Times this port's training step against a plain Keras ResNet step, interleaved in one process.

  python benchmarks/bench_step.py [--depth 50] [--width 1] [--image_size 224] [--batch 4]
      [--steps 10] [--warmup 2] [--jit_compile] [--mixed_precision POLICY ...] [--no_finetune]
      [--grey_views] [--quick] [--json FILE]
  python benchmarks/bench_step.py --baseline [--image_size 224] [--batch 8] [--steps 10] [--json FILE]

Variants (each one step per round, rounds alternate the order so drift and load hit all alike):
* port_pretrain: `train.Trainer`'s own compiled loop (`_train_loop`, one step per call): two-view
  model with batch blur, projection head, linear-eval head, NT-Xent + supervised + weight-decay
  loss, LARS update and the metric updates, under the strategy `train.make_strategy` picks (one CPU:
  MirroredStrategy with one replica). The batch is a fixed in-memory tensor served through the
  same `distribute_datasets_from_function` path the training loop uses (no TFDS decoding or
  augmentation), so input cost is excluded. No summary writer is active, and checkpoint saving
  and logging between loops are not part of a step. The batch holds RGB views (6 channels), or
  with --grey_views 1-channel views (2 channels), as the input pipeline yields MURA's
  radiographs; the model then blurs one channel per view and tiles it to RGB.
* port_finetune: the same loop with --train_mode=finetune, one view, 2 x batch images.
* keras_floor: tf_keras.applications.ResNet50 (weights=None, include_top=False, pooling='avg')
  plus a Dense head, forward + backward + SGD on the same number of images, in a tf.function
  without XLA. At depth 18/34 (not in keras.applications) a plain functional Keras ResNet with
  basic blocks stands in.
* with --jit_compile, *_xla variants of the port (default strategy, as train.py picks) and of
  the floor are added where they compile.
* with --mixed_precision mixed_bfloat16 / mixed_float16 (repeatable), port_pretrain_<policy>
  runs the pretraining step with that Keras policy (mixed_float16 with loss scaling, as
  train.py builds it); its ratio is to the same float32 keras_floor.

With --baseline the DenseNet-169 baseline is timed instead (--batch counts images):
* port_baseline: `train.Trainer`'s compiled loop with --train_mode=baseline (DenseNet-169 with the
  ImageNet normalisation and a sigmoid head, weighted BCE, Adam), input as above.
* keras_floor: tf_keras.applications.DenseNet169 (weights=None, include_top=False, pooling='avg')
  plus Dense(1), forward + backward + Adam on the same images, in a tf.function without XLA.

The headline `ratio` is the median over rounds of port_pretrain (port_baseline) time / keras_floor
time in the same round. `cpu_ratio` is the same with process CPU seconds, which other processes
on a busy machine disturb less than wall time.
"""
import argparse
import json
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from simclr_mura import config as config_lib  # noqa: E402
from simclr_mura import data as data_lib  # noqa: E402
from simclr_mura import recipes  # noqa: E402
from simclr_mura import train as train_lib  # noqa: E402
from simclr_mura.config import Config  # noqa: E402

# MURA-v1.1 training images; only sets the (irrelevant for timing) learning-rate schedule.
NUM_TRAIN_EXAMPLES = 36_808
QUICK = {'depth': 18, 'image_size': 64, 'steps': 5}
DEFAULTS = {'depth': 50, 'image_size': 224, 'steps': 10}
# Global batch: two-view pairs for SimCLR, images for the baseline (the paper's batch 8).
DEFAULT_BATCH = {'simclr': 4, 'baseline': 8}
KERAS_APPS = {50: 'ResNet50', 101: 'ResNet101', 152: 'ResNet152'}
BASIC_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


class Variant:
    """One timed step: `step()` runs a training step and returns once its results are computed."""

    def __init__(self, name: str, images_per_step: int, step: Callable[[], float], note: str):
        self.name = name
        self.images_per_step = images_per_step
        self.step = step
        self.note = note
        self.times: List[float] = []
        # Process CPU seconds (all threads) per step: the work done, which other processes on a
        # busy machine disturb far less than the wall time.
        self.cpu_times: List[float] = []
        self.error: Optional[str] = None


def _port_inputs(images_per_replica: int, image_size: int, channels: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(images_per_replica, image_size, image_size, channels)).astype(np.float32)
    labels = rng.integers(0, data_lib.NUM_CLASSES, size=images_per_replica)
    targets = {'label': np.eye(data_lib.NUM_CLASSES, dtype=np.float32)[labels],
               'weight': np.ones(images_per_replica, np.float32),
               'key': np.arange(images_per_replica, dtype=np.int64)}
    return images, targets


def port_variant(name: str, config: Config, strategy: tf.distribute.Strategy,
                 return_trainer: bool = False, view_channels: int = 3):
    """A Variant running `train.Trainer`'s compiled loop for one step per call (and the Trainer,
    with `return_trainer`), fed views of `view_channels` channels (3 RGB, 1 grey)."""
    pretrain = config.train_mode == 'pretrain'
    config_lib.validate(config.replace(model_dir='unused'), num_replicas=strategy.num_replicas_in_sync)
    recipe = recipes.for_config(config)
    with strategy.scope():
        model = recipe.build_model(data_lib.NUM_CLASSES)
        lr_schedule = recipe.learning_rate(NUM_TRAIN_EXAMPLES)
        optimizer = recipe.optimizer(lr_schedule)
    trainer = train_lib.Trainer(config, strategy, model, optimizer, lr_schedule,
                                train_steps=10**9, steps_per_loop=1, recipe=recipe)
    per_replica = config.train_batch_size // strategy.num_replicas_in_sync
    element = _port_inputs(per_replica, config.image_size,
                           view_channels * (2 if pretrain else 1), seed=0)

    def input_fn(_context):
        return tf.data.Dataset.from_tensors(element).repeat()

    iterator = iter(data_lib.build_distributed_dataset(input_fn, strategy))
    one_step = tf.constant(1, tf.int64)
    never = tf.constant(0, tf.int64)  # record_step: steps start at 1, so no image summary.

    def step():
        trainer._train_loop(iterator, one_step, never)  # pylint: disable=protected-access
        # Reading the metric waits for the step; resetting it (as each logged loop does) makes
        # the printed value this step's loss.
        loss = float(trainer.metrics['train/total_loss'].result().numpy())
        for metric in trainer.metrics.values():
            metric.reset_state()
        return loss

    images = config.train_batch_size * (2 if pretrain else 1)
    note = (f'{config.train_mode}, {type(strategy).__name__} x{strategy.num_replicas_in_sync}, '
            f'{config.optimizer}, {"XLA compute" if config.jit_compile else "no XLA"}'
            f'{"" if config.mixed_precision == "none" else ", " + config.mixed_precision}'
            f'{", grey views" if view_channels == 1 else ""}')
    variant = Variant(name, images, step, note)
    return (variant, trainer) if return_trainer else variant


def _basic_resnet(depth: int, image_size: int) -> tf_keras.Model:
    """A plain Keras ResNet-18/34 (v1, basic blocks), the floor where keras.applications has none."""
    layers = tf_keras.layers
    inputs = layers.Input((image_size, image_size, 3))
    x = layers.Conv2D(64, 7, 2, 'same', use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.MaxPool2D(3, 2, 'same')(x)
    for stage, blocks in enumerate(BASIC_BLOCKS[depth]):
        filters = 64 * 2**stage
        for block in range(blocks):
            strides = 2 if stage and not block else 1
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = layers.BatchNormalization()(
                    layers.Conv2D(filters, 1, strides, use_bias=False)(x))
            y = layers.ReLU()(layers.BatchNormalization()(
                layers.Conv2D(filters, 3, strides, 'same', use_bias=False)(x)))
            y = layers.BatchNormalization()(layers.Conv2D(filters, 3, 1, 'same', use_bias=False)(y))
            x = layers.ReLU()(layers.Add()([shortcut, y]))
    return tf_keras.Model(inputs, layers.GlobalAveragePooling2D()(x), name=f'resnet{depth}')


def floor_variant(name: str, depth: int, image_size: int, num_images: int,
                  jit_compile: bool) -> Variant:
    """A Variant running a plain Keras ResNet + Dense forward/backward/SGD step."""
    if depth in KERAS_APPS:
        backbone = getattr(tf_keras.applications, KERAS_APPS[depth])(
            weights=None, include_top=False, pooling='avg', input_shape=(image_size, image_size, 3))
        source = f'tf_keras.applications.{KERAS_APPS[depth]}'
    elif depth in BASIC_BLOCKS:
        backbone = _basic_resnet(depth, image_size)
        source = f'plain Keras ResNet-{depth}'
    else:
        raise ValueError(f'no Keras floor for depth {depth}; use one of {sorted([*BASIC_BLOCKS, *KERAS_APPS])}')
    model = tf_keras.Sequential([backbone, tf_keras.layers.Dense(data_lib.NUM_CLASSES)])
    optimizer = tf_keras.optimizers.SGD(0.01, momentum=0.9)
    images, targets = _port_inputs(num_images, image_size, 3, seed=1)
    images, labels = tf.constant(images), tf.constant(targets['label'])

    @tf.function(jit_compile=jit_compile)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    def step():
        return float(train_step(images, labels).numpy())

    return Variant(name, num_images, step, f'{source} + Dense, SGD, {"XLA" if jit_compile else "no XLA"}')


def densenet_floor_variant(name: str, image_size: int, num_images: int) -> Variant:
    """A Variant running a plain Keras DenseNet-169 + Dense(1) forward/backward/Adam step."""
    backbone = tf_keras.applications.DenseNet169(weights=None, include_top=False, pooling='avg',
                                                 input_shape=(image_size, image_size, 3))
    model = tf_keras.Sequential([backbone, tf_keras.layers.Dense(1)])
    optimizer = tf_keras.optimizers.Adam(1e-4)
    images, targets = _port_inputs(num_images, image_size, 3, seed=1)
    images, labels = tf.constant(images), tf.constant(targets['label'][:, 1:])

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y,
                                                                          logits=model(x, training=True)))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    def step():
        return float(train_step(images, labels).numpy())

    return Variant(name, num_images, step, 'tf_keras.applications.DenseNet169 + Dense(1), Adam, no XLA')


def build_variants(args) -> List[Variant]:
    """The port and floor variants the arguments ask for (XLA ones only with --jit_compile)."""
    if args.baseline:
        config = Config(train_mode='baseline', optimizer='adam', learning_rate=1e-4, weight_decay=0.,
                        baseline_weights='none', image_size=args.image_size,
                        train_batch_size=args.batch)
        train_lib.configure_runtime(config)
        return [port_variant('port_baseline', config, train_lib.make_strategy(config)),
                densenet_floor_variant('keras_floor', args.image_size, args.batch)]
    base = Config(resnet_depth=args.depth, width_multiplier=args.width, image_size=args.image_size,
                  train_batch_size=args.batch)
    train_lib.configure_runtime(base)
    strategy = train_lib.make_strategy(base)
    images = 2 * args.batch
    view_channels = 1 if args.grey_views else 3
    variants = [port_variant('port_pretrain', base, strategy, view_channels=view_channels),
                floor_variant('keras_floor', args.depth, args.image_size, images, jit_compile=False)]
    if not args.no_finetune:
        finetune = base.replace(train_mode='finetune', allow_random_init=True, train_batch_size=images)
        variants.append(port_variant('port_finetune', finetune, strategy,
                                     view_channels=view_channels))
    if args.jit_compile:
        xla = base.replace(jit_compile=True)
        xla_strategy = train_lib.make_strategy(xla)
        variants.append(port_variant('port_pretrain_xla', xla, xla_strategy,
                                     view_channels=view_channels))
        variants.append(floor_variant('keras_floor_xla', args.depth, args.image_size, images,
                                      jit_compile=True))
    for policy in args.mixed_precision:
        variants.append(policy_variant(base.replace(mixed_precision=policy), strategy,
                                       view_channels))
    return variants


def policy_variant(config: Config, strategy: tf.distribute.Strategy,
                   view_channels: int = 3) -> Variant:
    """The pretraining step with a Keras mixed-precision policy (float32 variables, 16-bit compute).

    The policy is process-wide in Keras and read when layers are made, so it is set only while
    this variant's model is built; the other variants keep float32.
    """
    train_lib.configure_runtime(config)
    try:
        return port_variant(f'port_pretrain_{config.mixed_precision}', config, strategy,
                            view_channels=view_channels)
    finally:
        tf_keras.mixed_precision.set_global_policy('float32')


def run_rounds(variants: List[Variant], rounds: int, warmup: int) -> None:
    """Runs every variant once per round, alternating the order; records post-warm-up times."""
    for r in range(warmup + rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for variant in order:
            if variant.error:
                continue
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                loss = variant.step()
            except (tf.errors.OpError, ValueError, TypeError, NotImplementedError) as e:
                # Only expected for XLA variants whose ops do not compile on this device.
                variant.error = f'{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}'
                print(f'  {variant.name}: failed, left out ({variant.error})', flush=True)
                continue
            seconds = time.perf_counter() - start
            cpu_seconds = time.process_time() - cpu_start
            if r >= warmup:
                variant.times.append(seconds)
                variant.cpu_times.append(cpu_seconds)
            print(f'  round {r + 1}/{warmup + rounds}{" (warm-up)" if r < warmup else ""} '
                  f'{variant.name}: {seconds:.3f} s, loss {loss:.4f}', flush=True)


def _pairwise(times: List[float], floor_times: List[float], prefix: str) -> dict:
    # Both lists start at the first timed round, so index i is the same round in both.
    n = min(len(times), len(floor_times))
    if not n:
        return {}
    ratios = np.array(times[:n]) / np.array(floor_times[:n])
    return {prefix: float(np.median(ratios)), f'{prefix}_min': float(ratios.min()),
            f'{prefix}_max': float(ratios.max()),
            f'{prefix}_of_medians': float(np.median(times) / np.median(floor_times)),
            f'{prefix}_pairwise': [round(float(x), 4) for x in ratios]}


def summarise(variants: List[Variant]) -> Dict[str, dict]:
    """Per-variant statistics, with per-round ratios to keras_floor (and to keras_floor_xla for
    the XLA variants, when it ran)."""
    by_name = {v.name: v for v in variants}
    results = {}
    for v in variants:
        if v.error or not v.times:
            results[v.name] = {'error': v.error or 'no timed steps', 'note': v.note}
            continue
        times = np.array(v.times)
        row = {'median_s': float(np.median(times)), 'p10_s': float(np.percentile(times, 10)),
               'p90_s': float(np.percentile(times, 90)), 'images_per_step': v.images_per_step,
               'images_per_s': float(v.images_per_step / np.median(times)),
               'times_s': [round(t, 4) for t in v.times],
               'cpu_median_s': float(np.median(v.cpu_times)),
               'cpu_times_s': [round(t, 4) for t in v.cpu_times], 'note': v.note}
        floor = by_name['keras_floor']
        if not floor.error:
            row.update(_pairwise(v.times, floor.times, 'ratio_to_floor'))
            row.update(_pairwise(v.cpu_times, floor.cpu_times, 'cpu_ratio_to_floor'))
        xla_floor = by_name.get('keras_floor_xla')
        if v.name.endswith('_xla') and xla_floor is not None and not xla_floor.error:
            row.update(_pairwise(v.times, xla_floor.times, 'ratio_to_xla_floor'))
        results[v.name] = row
    return results


def machine_info() -> dict:
    """CPU count, platform and library versions, for reading the numbers later."""
    return {'cpu_count': os.cpu_count(),
            'cpus_usable': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
            'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
            'python': platform.python_version(), 'tensorflow': tf.__version__,
            'tf_keras': tf_keras.__version__,
            'gpus': len(tf.config.list_physical_devices('GPU'))}


def print_table(results: Dict[str, dict], header: str) -> None:
    """The results as a fixed-width table."""
    print(header)
    print(f'  {"name":<30}{"median s":>9}{"p10 / p90 s":>16}{"images/s":>9}'
          f'{"ratio":>7}{"pairwise min-max":>17}{"CPU s":>7}{"CPU ratio":>10}')
    for name, row in results.items():
        if 'error' in row:
            print(f'  {name:<30}  not run: {row["error"]}')
            continue
        spread = f'{row["p10_s"]:.3f} / {row["p90_s"]:.3f}'
        ratio = f'{row["ratio_to_floor"]:.2f}x' if 'ratio_to_floor' in row else '-'
        pair_range = (f'{row["ratio_to_floor_min"]:.2f}-{row["ratio_to_floor_max"]:.2f}'
                      if 'ratio_to_floor' in row else '-')
        cpu_ratio = f'{row["cpu_ratio_to_floor"]:.2f}x' if 'cpu_ratio_to_floor' in row else '-'
        print(f'  {name:<30}{row["median_s"]:>9.3f}{spread:>16}{row["images_per_s"]:>9.1f}'
              f'{ratio:>7}{pair_range:>17}{row["cpu_median_s"]:>7.2f}{cpu_ratio:>10}')
    for name, row in results.items():
        if 'ratio_to_xla_floor' in row and name != 'keras_floor_xla':
            print(f'  {name} / keras_floor_xla: {row["ratio_to_xla_floor"]:.2f}x '
                  f'(pairwise {row["ratio_to_xla_floor_min"]:.2f}-{row["ratio_to_xla_floor_max"]:.2f})')
    for name, row in results.items():
        print(f'  {name}: {row["note"]}')


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments; --quick fills in R18 / 64 px / 5 steps unless given explicitly."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--depth', type=int, help='ResNet depth (default 50; 18 with --quick)')
    parser.add_argument('--width', type=int, default=1, help='width multiplier of the port')
    parser.add_argument('--image_size', type=int, help='pixels (default 224; 64 with --quick)')
    parser.add_argument('--batch', type=int,
                        help='global batch of two-view pairs (default 4 -> 8 images per step); with '
                             '--baseline, of images (default 8)')
    parser.add_argument('--steps', type=int, help='timed rounds (default 10; 5 with --quick)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed rounds first (>= 1 keeps tracing out of the timings)')
    parser.add_argument('--jit_compile', action='store_true', help='add XLA variants')
    parser.add_argument('--no_finetune', action='store_true', help='leave out port_finetune')
    parser.add_argument('--mixed_precision', action='append', default=[],
                        choices=[p for p in config_lib.MIXED_PRECISION_POLICIES if p != 'none'],
                        help='add a pretraining variant with this Keras policy (repeatable)')
    parser.add_argument('--grey_views', action='store_true',
                        help='feed the SimCLR variants 1-channel views (what the input pipeline '
                             'yields for MURA) instead of RGB ones')
    parser.add_argument('--quick', action='store_true', help='ResNet-18 at 64 px, 5 steps')
    parser.add_argument('--baseline', action='store_true',
                        help='time the DenseNet-169 baseline step instead of SimCLR (--depth is unused)')
    parser.add_argument('--json', help='write the results to this JSON file')
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else DEFAULTS
    defaults = dict(defaults, batch=DEFAULT_BATCH['baseline' if args.baseline else 'simclr'])
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    problems = [f'--{k}={getattr(args, k)} must be >= {m}' for k, m in
                (('batch', 1), ('steps', 1), ('warmup', 1), ('image_size', 32), ('width', 1))
                if getattr(args, k) < m]
    if args.baseline and (args.jit_compile or args.width != 1 or args.mixed_precision):
        problems.append('--baseline times the DenseNet-169 baseline without XLA at width 1 in '
                        'float32; leave out --jit_compile, --width and --mixed_precision')
    if args.baseline and args.grey_views:
        problems.append("--grey_views is for the SimCLR step; the baseline's input is RGB")
    if args.depth not in KERAS_APPS and args.depth not in BASIC_BLOCKS:
        problems.append(f'--depth={args.depth} has no Keras floor; use one of '
                        f'{sorted([*BASIC_BLOCKS, *KERAS_APPS])}')
    if problems:
        parser.error('; '.join(problems))
    if args.width != 1:
        print(f'bench_step: note: the Keras floor is width 1; the port runs width {args.width}')
    return args


def main(argv=None) -> int:
    """Builds the variants, runs the interleaved rounds, prints the table, writes JSON."""
    args = parse_args(argv)
    load_before = os.getloadavg()
    if args.baseline:
        what = f'DenseNet-169 baseline, {args.image_size} px, batch {args.batch} images'
    else:
        what = (f'ResNet-{args.depth} x{args.width}, {args.image_size} px, batch {args.batch} two-view '
                f'({2 * args.batch} images)')
    print(f'bench_step: {what}, {args.warmup} warm-up + {args.steps} timed rounds; '
          f'load average {load_before[0]:.2f}', flush=True)
    variants = build_variants(args)
    run_rounds(variants, args.steps, args.warmup)
    load_after = os.getloadavg()
    results = summarise(variants)
    machine = dict(machine_info(), load_average_before=[round(x, 2) for x in load_before],
                   load_average_after=[round(x, 2) for x in load_after])
    print_table(results, f'bench_step: median of {args.steps} interleaved rounds; ratio = median '
                         'over rounds of (variant / keras_floor) in the same round')
    print(f'  machine: {machine["cpu_count"]} CPUs, {machine["platform"]}, TF {machine["tensorflow"]}, '
          f'load average before {load_before[0]:.2f}, after {load_after[0]:.2f}')
    headline = results['port_baseline' if args.baseline else 'port_pretrain']
    output = {
        'ratio': headline.get('ratio_to_floor'),
        'ratio_range': [headline.get('ratio_to_floor_min'), headline.get('ratio_to_floor_max')],
        'ratio_of_medians': headline.get('ratio_to_floor_of_medians'),
        'cpu_ratio': headline.get('cpu_ratio_to_floor'),
        'settings': {k: getattr(args, k) for k in ('depth', 'width', 'image_size', 'batch', 'steps',
                                                   'warmup', 'jit_compile', 'mixed_precision',
                                                   'quick', 'baseline', 'grey_views')},
        'input': 'fixed in-memory batch (tf.data from_tensors().repeat()) through the training '
                 "loop's distribute_datasets_from_function; TFDS reading and augmentation excluded",
        'results': results, 'machine': machine}
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(output, f, indent=2)
    return 0 if headline.get('ratio_to_floor') is not None else 1


if __name__ == '__main__':
    sys.exit(main())
