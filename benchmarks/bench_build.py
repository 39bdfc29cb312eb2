"""Times synthetic MURA generation and the `mura/all` TFDS build against a read floor and a copy floor.

  python benchmarks/bench_build.py [--scale 1.0] [--quick] [--json FILE] [--workdir DIR]
      [--manual_dir DIR] [--no_tfds_writer]

Steps: (1) write a synthetic MURA-v1.1 tree (or use --manual_dir, a folder holding an existing
MURA-v1.1/, real or synthetic; then nothing is generated); (2) the read floor: read every image
listed in the CSVs once, twice in a row, keeping the second (page cache warm, as it is for the
build that follows); (3) the copy floor: read every image and append it to one file in the
output folder (what any build that stores the bytes must at least do); (4) build `mura/<config>`
through the TFDS Python API into a fresh data dir with the builder's writer (`mura_writer`) and,
unless --no_tfds_writer, again with TFDS's own shard writer (`Builder(tfds_writer=True)`, the
writer before), checking that both wrote the same files.

Every timed step starts after `os.sync()`: written data waits in the page cache and the kernel
throttles writers once too much of it is dirty, so without the sync a step would pay for the
writes of the step before (on this machine a plain copy took from 2.2 to 8 s that way).
TensorFlow is imported before the timers start. The headline `ratio_vs_read_floor` is build
seconds / read floor seconds; `ratio_vs_copy_floor` compares with the copy.
"""
import argparse
import filecmp
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simclr_mura import io_util  # noqa: E402
from tfds_mura import synthetic  # noqa: E402

QUICK_SCALE = 0.02


def _listed_images(root: str) -> list:
    paths = []
    for split in ('train', 'valid'):
        with open(os.path.join(root, f'{split}_image_paths.csv')) as f:
            paths += [line.strip() for line in f if line.strip()]
    return paths


def read_floor(root: str) -> tuple:
    """(seconds, images, bytes) to read every image listed in the two image CSVs once."""
    paths = _listed_images(root)
    parent = os.path.dirname(root)
    start, total = time.perf_counter(), 0
    for rel in paths:
        with open(os.path.join(parent, rel), 'rb') as f:
            total += len(f.read())
    return time.perf_counter() - start, len(paths), total


def copy_floor(root: str, out_dir: str) -> float:
    """Seconds to read every listed image and append it to one file in `out_dir` (deleted after)."""
    paths = _listed_images(root)
    parent, target = os.path.dirname(root), os.path.join(out_dir, 'copy_floor.bin')
    os.makedirs(out_dir, exist_ok=True)
    os.sync()
    start = time.perf_counter()
    with open(target, 'wb') as out:
        for rel in paths:
            with open(os.path.join(parent, rel), 'rb') as f:
                out.write(f.read())
    seconds = time.perf_counter() - start
    os.remove(target)
    return seconds


def build(manual_dir: str, data_dir: str, config: str, tfds_writer: bool = False) -> dict:
    """Wall and CPU seconds of one TFDS build (CPU of this process, all threads), examples written,
    dataset bytes, split sizes and the data path."""
    import tensorflow as tf  # noqa: F401  (imported before timing: the first write would import it)
    import tensorflow_datasets as tfds
    import tfds_mura  # noqa: F401  (registers `mura`)
    tfds.disable_progress_bar()
    builder = tfds.builder(f'mura/{config}', data_dir=data_dir, tfds_writer=tfds_writer)
    os.sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    size = sum(os.path.getsize(os.path.join(builder.data_path, f)) for f in os.listdir(builder.data_path))
    return {'seconds': seconds, 'cpu_seconds': cpu_seconds, 'examples': sum(splits.values()), 'bytes': size,
            'splits': splits, 'path': os.fspath(builder.data_path)}


def same_files(path_a: str, path_b: str) -> bool:
    """Whether two built dataset folders hold the same TFRecord files, byte for byte."""
    names = sorted(f for f in os.listdir(path_a) if '.tfrecord' in f)
    if names != sorted(f for f in os.listdir(path_b) if '.tfrecord' in f):
        return False
    return all(filecmp.cmp(os.path.join(path_a, n), os.path.join(path_b, n), shallow=False) for n in names)


def _figure(seconds: float) -> float:
    """Seconds to 4 significant digits (a quick run's floors are milliseconds)."""
    return float(f'{seconds:.4g}')


def main(argv=None) -> int:
    """Runs the benchmark, prints a table and optionally writes JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--scale', type=float, default=1.0, help='synthetic scale (1.0 = 40,005 images)')
    parser.add_argument('--quick', action='store_true', help=f'use scale {QUICK_SCALE} (under 3 minutes)')
    parser.add_argument('--json', help='write the results to this JSON file')
    parser.add_argument('--workdir', help='keep the tree and dataset here (default: a temp dir, deleted)')
    parser.add_argument('--config', default='all')
    parser.add_argument('--workers', type=int, default=2, help='generator processes')
    parser.add_argument('--manual_dir', help='use the MURA-v1.1/ in this folder instead of generating one')
    parser.add_argument('--no_tfds_writer', action='store_true',
                        help="skip the second build with TFDS's shard writer (the writer before)")
    args = parser.parse_args(argv)
    if args.manual_dir and not os.path.isfile(os.path.join(args.manual_dir, 'MURA-v1.1', 'train_image_paths.csv')):
        parser.error(f'--manual_dir={args.manual_dir} holds no MURA-v1.1/train_image_paths.csv')
    scale = QUICK_SCALE if args.quick else args.scale
    workdir = args.workdir or tempfile.mkdtemp(prefix='bench_build_')
    identical = None
    try:
        data = os.path.join(workdir, 'data')
        shutil.rmtree(data, ignore_errors=True)
        if args.manual_dir:
            manual, generate_seconds, scale = args.manual_dir, None, None
            root = os.path.join(manual, 'MURA-v1.1')
        else:
            manual = os.path.join(workdir, 'manual')
            start = time.perf_counter()
            summary = synthetic.write_synthetic_mura(manual, scale=scale, seed=0, workers=args.workers,
                                                     overwrite=True)
            generate_seconds = time.perf_counter() - start
            root = summary.root
        read_floor(root)  # warms the page cache
        os.sync()
        floor_seconds, images, image_bytes = read_floor(root)
        copy_seconds = copy_floor(root, data)
        builds = {'mura_writer': build(manual, os.path.join(data, 'mura_writer'), args.config)}
        if not args.no_tfds_writer:
            builds['tfds_writer'] = build(manual, os.path.join(data, 'tfds_writer'), args.config, tfds_writer=True)
            identical = same_files(builds['mura_writer']['path'], builds['tfds_writer']['path'])
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    main_build = builds['mura_writer']
    result = {
        'scale': scale, 'config': args.config, 'images': images, 'examples_written': main_build['examples'],
        'source_bytes': image_bytes, 'dataset_bytes': main_build['bytes'],
        'manual_dir': args.manual_dir,
        'generate_seconds': generate_seconds and round(generate_seconds, 2),
        'read_floor_seconds': _figure(floor_seconds), 'copy_floor_seconds': _figure(copy_seconds),
        'build_seconds': _figure(main_build['seconds']), 'build_cpu_seconds': _figure(main_build['cpu_seconds']),
        'ratio_vs_read_floor': round(main_build['seconds'] / floor_seconds, 2),
        'ratio_vs_copy_floor': round(main_build['seconds'] / copy_seconds, 2),
        'images_per_second': round(images / main_build['seconds'], 1),
        'generate_images_per_second': generate_seconds and round(images / generate_seconds, 1),
        'splits': main_build['splits'], 'cpus': os.cpu_count(), 'load_average_1min': round(os.getloadavg()[0], 2),
    }
    if 'tfds_writer' in builds:
        before = builds['tfds_writer']
        result['tfds_writer'] = {
            'build_seconds': _figure(before['seconds']), 'build_cpu_seconds': _figure(before['cpu_seconds']),
            'ratio_vs_read_floor': round(before['seconds'] / floor_seconds, 2),
            'ratio_vs_copy_floor': round(before['seconds'] / copy_seconds, 2),
            'same_files_as_mura_writer': identical}
    rows = [('images (listed in CSVs)', f'{images:,}'),
            ('examples written (all splits)', f'{main_build["examples"]:,}'),
            ('source MiB / dataset MiB', f'{image_bytes / 2**20:,.0f} / {main_build["bytes"] / 2**20:,.0f}'),
            ('generate s (img/s)', f'{generate_seconds:.1f} ({result["generate_images_per_second"]:.0f})'
             if generate_seconds else f'not generated ({args.manual_dir})'),
            ('read floor s', f'{floor_seconds:.2f}'),
            ('copy floor s (x read floor)', f'{copy_seconds:.2f} ({copy_seconds / floor_seconds:.1f}x)')]
    for name, run in builds.items():
        rows += [(f'build, {name}: s / CPU s', f'{run["seconds"]:.1f} / {run["cpu_seconds"]:.1f}'),
                 (f'  x read floor / x copy floor', f'{run["seconds"] / floor_seconds:.1f}x / '
                                                   f'{run["seconds"] / copy_seconds:.2f}x')]
    if 'tfds_writer' in builds:
        rows.append(('same files from both writers', 'yes' if identical else 'NO'))
    print(f'bench_build: mura/{args.config}, {"scale " + str(scale) if scale else args.manual_dir}, '
          f'load average (1 min) {result["load_average_1min"]}')
    for name, value in rows:
        print(f'  {name:<32}{value:>20}')
    print('  splits: ' + ', '.join(f'{k}={v}' for k, v in main_build['splits'].items()))
    if args.json:
        io_util.write_json_atomic(args.json, result)
    return 0 if identical or args.no_tfds_writer else 1


if __name__ == '__main__':
    sys.exit(main())
