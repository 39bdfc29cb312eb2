"""Input pipeline throughput from a built TFDS `mura` dataset, against a decode floor and a
straightforward implementation, plus the training step fed by it against a fixed batch.

  python benchmarks/bench_input.py [--data_dir DIR --dataset mura/all | --scale 0.05]
      [--split train] [--image_size 224] [--batch 64] [--examples 1024] [--rounds 3]
      [--color_jitter_strength 1.0] [--step_depth 50] [--step_image_size 224] [--step_batch 4]
      [--steps 6] [--quick] [--json FILE]

Without --data_dir a synthetic MURA-v1.1 (`tfds_mura.synthetic`, --scale) is written and built
into a temporary directory first (not timed). Pipelines, each read from the same split:
* decode_floor: the TFDS records read and every PNG decoded (`tf.io.decode_png`, 1 channel) in a
  parallel map, batched and prefetched; nothing else. No input pipeline can beat it.
* train_two_view: the product's pretraining input, `data.build_input_fn(is_training=True,
  is_pretrain=True)`: shuffle, repeat, decode, two augmented views per image (random resized crop
  with bicubic resize, flip, colour jitter of --color_jitter_strength; the radiographs' grey
  views stay 1-channel, the model tiles them to RGB), batch, prefetch. The Gaussian blur is not part of the input: the model applies it to each view's
  batch (`data_util.batch_random_blur`), so it is inside the timed training step below.
* train_straightforward: the same augmentation functions, written the way a direct port reads:
  one example at a time (`map` without `num_parallel_calls`, no prefetch), the PNG decoded in the
  map, the whole radiograph converted to float RGB first and then cropped twice (the original's
  order). Same outputs for the same random draws (tests/test_data_util.py checks this).
* eval_one_view / eval_straightforward: the evaluation input (`is_training=False`: centre crop
  0.875 and bicubic resize, one view), the product's and the straightforward one.
Rounds alternate the pipelines so load changes on the machine hit all of them; each round takes
--examples examples from a new iterator of each pipeline after two warm-up batches; the table reports
the median examples/s over rounds and the ratios of those medians, and also examples per CPU-second
of this process (all threads), which a loaded machine disturbs less; it does not show parallelism.

Step check (skipped with --steps 0): `train.Trainer`'s compiled loop (as benchmarks/bench_step.py)
for a ResNet of --step_depth at --step_image_size with --step_batch two-view pairs, fed by
(a) the product's input pipeline and (b) one fixed batch repeated from memory; blocks of --steps
consecutive steps of each, alternating. real/fixed near 1 means the step never waits for input;
on this 2-core CPU the pipeline's threads also take CPU time from the step, which shows up here.

JSON (--json FILE): `ratio_vs_decode_floor` (train_two_view / decode_floor examples/s) is the
headline; also `ratio_vs_straightforward`, the eval ratios, every pipeline's examples/s per round,
the step times and the machine.
"""
import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from simclr_mura import config as config_lib  # noqa: E402
from simclr_mura import data as data_lib  # noqa: E402
from simclr_mura import data_util  # noqa: E402
from simclr_mura import io_util  # noqa: E402
from simclr_mura import recipes  # noqa: E402
from simclr_mura import train as train_lib  # noqa: E402
from simclr_mura.config import Config  # noqa: E402

QUICK = {'scale': 0.01, 'batch': 32, 'examples': 256, 'rounds': 2, 'step_depth': 18,
         'step_image_size': 64, 'step_batch': 8, 'steps': 4}
DEFAULTS = {'scale': 0.05, 'batch': 64, 'examples': 1024, 'rounds': 3, 'step_depth': 50,
            'step_image_size': 224, 'step_batch': 4, 'steps': 6}
PIPELINES = ('decode_floor', 'train_two_view', 'train_straightforward', 'eval_one_view',
             'eval_straightforward')


def prepare_dataset(args, workdir: str) -> tfds.core.DatasetBuilder:
    """The prepared builder: --data_dir as given, or a synthetic tree built under `workdir`."""
    if args.data_dir:
        builder = data_lib.make_builder(args.dataset, args.data_dir)
        data_lib.ensure_prepared(builder)
        return builder
    from tfds_mura import synthetic  # pylint: disable=import-outside-toplevel
    manual = os.path.join(workdir, 'manual')
    synthetic.write_synthetic_mura(manual, scale=args.scale, seed=0, workers=2)
    builder = data_lib.make_builder(args.dataset, os.path.join(workdir, 'data'))
    data_lib.ensure_prepared(builder, manual)
    return builder


def _raw_records(builder, split: str) -> tf.data.Dataset:
    """The split's records in file order with the PNG bytes not decoded, repeated."""
    return builder.as_dataset(split=split, shuffle_files=False,
                              decoders={'image': tfds.decode.SkipDecoding()}).repeat()


def decode_floor(builder, split: str, batch: int) -> tf.data.Dataset:
    """Read + decode every PNG in parallel; only the decoded shapes are kept (see docstring)."""
    ds = _raw_records(builder, split).map(
        lambda x: tf.shape(tf.io.decode_png(x['image'], channels=1)),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def straightforward(builder, split: str, batch: int, image_size: int, strength: float,
                    is_training: bool) -> tf.data.Dataset:
    """One example at a time, whole image converted first (the baseline of the docstring)."""
    def map_fn(features):
        image = data_util.to_float_rgb(tf.io.decode_png(features['image'], channels=1))
        if is_training:
            image = tf.concat([data_util.preprocess_for_train(image, image_size, image_size, strength)
                               for _ in range(2)], -1)
        else:
            image = data_util.preprocess_for_eval(image, image_size, image_size,
                                                  crop=image_size > config_lib.CIFAR_IMAGE_SIZE)
        return image, tf.one_hot(tf.cast(features['label'], tf.int32), data_lib.NUM_CLASSES)
    ds = _raw_records(builder, split)
    if is_training:
        ds = ds.shuffle(batch * 10)
    return ds.map(map_fn).batch(batch, drop_remainder=True)


def product(builder, split: str, batch: int, image_size: int, strength: float,
            is_training: bool) -> tf.data.Dataset:
    """The product's input pipeline (`data.build_input_fn`) on one input pipeline."""
    input_fn = data_lib.build_input_fn(builder, split, batch, is_training=is_training,
                                       is_pretrain=is_training, image_size=image_size,
                                       color_jitter_strength=strength)
    ds = input_fn(tf.distribute.InputContext())
    return ds if is_training else ds.repeat()


def make_pipelines(builder, args) -> Dict[str, tf.data.Dataset]:
    size, strength, split, batch = args.image_size, args.color_jitter_strength, args.split, args.batch
    return {
        'decode_floor': decode_floor(builder, split, batch),
        'train_two_view': product(builder, split, batch, size, strength, True),
        'train_straightforward': straightforward(builder, split, batch, size, strength, True),
        'eval_one_view': product(builder, split, batch, size, strength, False),
        'eval_straightforward': straightforward(builder, split, batch, size, strength, False),
    }


def _batch_size(element) -> int:
    first = tf.nest.flatten(element)[0]
    return int(first.shape[0])


def time_pipelines(pipelines: Dict[str, tf.data.Dataset], examples: int, rounds: int,
                   warmup_batches: int = 2) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """Examples per second and per CPU-second (this process, all threads) of each pipeline per
    round (pipelines alternate within a round).

    Only one iterator exists at a time: an idle pipeline's prefetch threads would otherwise keep
    working (and filling buffers) while another one is timed. Each round starts a new iterator and
    discards `warmup_batches` batches (start-up, shuffle buffer fill) before the timer starts.
    """
    rates = {name: [] for name in pipelines}
    cpu_rates = {name: [] for name in pipelines}
    for r in range(rounds):
        order = list(pipelines) if r % 2 == 0 else list(reversed(pipelines))
        for name in order:
            iterator = iter(pipelines[name])
            for _ in range(warmup_batches):
                next(iterator)
            done, start, cpu_start = 0, time.perf_counter(), time.process_time()
            while done < examples:
                done += _batch_size(next(iterator))
            rates[name].append(done / (time.perf_counter() - start))
            cpu_rates[name].append(done / (time.process_time() - cpu_start))
            del iterator
    return rates, cpu_rates


def _trainer_step(config: Config, strategy, dataset_fn: Callable) -> Callable[[], None]:
    """One compiled training step per call of `train.Trainer`, fed from `dataset_fn`."""
    config_lib.validate(config.replace(model_dir='unused'), num_replicas=strategy.num_replicas_in_sync)
    recipe = recipes.for_config(config)
    with strategy.scope():
        model = recipe.build_model(data_lib.NUM_CLASSES)
        lr_schedule = recipe.learning_rate(36_808)
        optimizer = recipe.optimizer(lr_schedule)
    trainer = train_lib.Trainer(config, strategy, model, optimizer, lr_schedule,
                                train_steps=10**9, steps_per_loop=1, recipe=recipe)
    iterator = iter(data_lib.build_distributed_dataset(dataset_fn, strategy))
    one, never = tf.constant(1, tf.int64), tf.constant(0, tf.int64)

    def step():
        trainer._train_loop(iterator, one, never)  # pylint: disable=protected-access
        trainer.metrics['train/total_loss'].result().numpy()  # waits for the step
    return step


def time_steps(builder, args) -> Dict[str, List[float]]:
    """Step times fed by the product's pipeline ('real_input') and by one fixed batch."""
    config = Config(resnet_depth=args.step_depth, image_size=args.step_image_size,
                    train_batch_size=args.step_batch, color_jitter_strength=args.color_jitter_strength)
    train_lib.configure_runtime(config)
    strategy = train_lib.make_strategy(config)
    input_fn = data_lib.build_input_fn(builder, args.split, config.train_batch_size, is_training=True,
                                       is_pretrain=True, image_size=config.image_size,
                                       color_jitter_strength=config.color_jitter_strength)
    fixed = next(iter(input_fn(tf.distribute.InputContext())))
    steps = {'real_input': _trainer_step(config, strategy, input_fn),
             'fixed_batch': _trainer_step(config, strategy,
                                          lambda _: tf.data.Dataset.from_tensors(fixed).repeat())}
    times = {name: [] for name in steps}
    for name, step in steps.items():
        for _ in range(2):  # trace + warm-up
            step()
    for r in range(args.rounds):
        for name in (list(steps) if r % 2 == 0 else list(reversed(steps))):
            for _ in range(args.steps):
                start = time.perf_counter()
                steps[name]()
                times[name].append(time.perf_counter() - start)
    return times


def summarise(rates: Dict[str, List[float]], cpu_rates: Dict[str, List[float]],
              step_times: Dict[str, List[float]], args) -> dict:
    median = {name: float(np.median(v)) for name, v in rates.items()}
    result = {
        'ratio_vs_decode_floor': round(median['train_two_view'] / median['decode_floor'], 3),
        'ratio_vs_straightforward': round(median['train_two_view'] / median['train_straightforward'], 3),
        'eval_ratio_vs_decode_floor': round(median['eval_one_view'] / median['decode_floor'], 3),
        'eval_ratio_vs_straightforward': round(median['eval_one_view'] / median['eval_straightforward'], 3),
        'examples_per_second': {k: round(v, 1) for k, v in median.items()},
        'examples_per_second_rounds': {k: [round(x, 1) for x in v] for k, v in rates.items()},
        'examples_per_cpu_second': {k: round(float(np.median(v)), 1) for k, v in cpu_rates.items()},
        'settings': {k: getattr(args, k) for k in (
            'dataset', 'split', 'image_size', 'batch', 'examples', 'rounds', 'color_jitter_strength',
            'step_depth', 'step_image_size', 'step_batch', 'steps', 'scale', 'quick')},
        'machine': {'cpu_count': os.cpu_count(), 'platform': platform.platform(),
                    'python': platform.python_version(), 'tensorflow': tf.__version__,
                    'load_average_1min': round(os.getloadavg()[0], 2)},
    }
    if step_times:
        real, fixed = (float(np.median(step_times[k])) for k in ('real_input', 'fixed_batch'))
        result['step'] = {'real_input_median_s': round(real, 4), 'fixed_batch_median_s': round(fixed, 4),
                          'real_over_fixed': round(real / fixed, 3),
                          'times_s': {k: [round(t, 4) for t in v] for k, v in step_times.items()}}
    return result


def print_table(result: dict, args) -> None:
    rates, floor = result['examples_per_second'], result['examples_per_second']['decode_floor']
    print(f'bench_input: {args.dataset} {args.split}, {args.image_size} px, batch {args.batch}, '
          f'jitter {args.color_jitter_strength}, {args.rounds} rounds x {args.examples} examples')
    cpu = result['examples_per_cpu_second']
    print(f'  {"pipeline":<24}{"examples/s":>12}{"vs floor":>10}{"per CPU-s":>11}  rounds (examples/s)')
    for name in PIPELINES:
        per_round = ' '.join(f'{x:.0f}' for x in result['examples_per_second_rounds'][name])
        print(f'  {name:<24}{rates[name]:>12.1f}{rates[name] / floor:>9.2f}x{cpu[name]:>11.1f}  {per_round}')
    print(f'  train two-view / straightforward: {result["ratio_vs_straightforward"]:.2f}x, '
          f'/ decode floor: {result["ratio_vs_decode_floor"]:.2f}')
    print(f'  eval one-view / straightforward: {result["eval_ratio_vs_straightforward"]:.2f}x, '
          f'/ decode floor: {result["eval_ratio_vs_decode_floor"]:.2f}')
    if 'step' in result:
        step = result['step']
        print(f'  step (ResNet-{args.step_depth}, {args.step_image_size} px, {args.step_batch} pairs): '
              f'real input {step["real_input_median_s"]:.3f} s, fixed batch '
              f'{step["fixed_batch_median_s"]:.3f} s, real/fixed {step["real_over_fixed"]:.3f}')
    print(f'  load average (1 min) at the end: {result["machine"]["load_average_1min"]}')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data_dir', help='TFDS data dir holding a built --dataset (default: '
                        'build a synthetic one in a temp dir)')
    parser.add_argument('--dataset', default='mura/all')
    parser.add_argument('--scale', type=float, help='synthetic scale without --data_dir')
    parser.add_argument('--split', default='train')
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--color_jitter_strength', type=float, default=1.0)
    for name in ('batch', 'examples', 'rounds', 'step_depth', 'step_image_size', 'step_batch', 'steps'):
        parser.add_argument(f'--{name}', type=int)
    parser.add_argument('--quick', action='store_true', help='a small run (under 3 minutes)')
    parser.add_argument('--json', help='write the results to this JSON file')
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    problems = [f'--{name}={getattr(args, name)} must be >= 1' for name in
                ('batch', 'examples', 'rounds', 'image_size', 'step_image_size', 'step_batch')
                if getattr(args, name) < 1]
    if args.steps < 0:
        problems.append(f'--steps={args.steps} must be >= 0 (0 skips the step check)')
    if args.step_depth not in config_lib.RESNET_DEPTHS:
        problems.append(f'--step_depth={args.step_depth} must be one of {config_lib.RESNET_DEPTHS}')
    if not args.data_dir and not 0 < args.scale <= 1:
        problems.append(f'--scale={args.scale} must be in (0, 1]')
    if problems:
        parser.error('; '.join(problems))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    tfds.disable_progress_bar()
    workdir = tempfile.mkdtemp(prefix='bench_input_')
    try:
        try:
            builder = prepare_dataset(args, workdir)
        except config_lib.ConfigError as e:
            print(f'error: {e}', file=sys.stderr)
            return 1
        rates, cpu_rates = time_pipelines(make_pipelines(builder, args), args.examples, args.rounds)
        step_times = time_steps(builder, args) if args.steps else {}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = summarise(rates, cpu_rates, step_times, args)
    print_table(result, args)
    if args.json:
        io_util.write_json_atomic(args.json, result)
    return 0


if __name__ == '__main__':
    sys.exit(main())
