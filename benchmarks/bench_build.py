"""Times synthetic MURA generation and the `mura/all` TFDS build against a read floor.

  python benchmarks/bench_build.py [--scale 1.0] [--quick] [--json FILE] [--workdir DIR]
      [--manual_dir DIR]

Steps: (1) write a synthetic MURA-v1.1 tree (or use --manual_dir, a folder holding an existing
MURA-v1.1/, real or synthetic; then nothing is generated); (2) the read floor: read every image
listed in the CSVs once, twice in a row, keeping the second (page cache warm, as it is for the
build that follows); (3) build `mura/<config>` through the TFDS Python API into a fresh data dir.
TensorFlow is imported before the build timer starts, so the build time is the build alone.
The headline `ratio_vs_read_floor` is build seconds / read floor seconds.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simclr_mura import io_util  # noqa: E402
from tfds_mura import synthetic  # noqa: E402

QUICK_SCALE = 0.02


def read_floor(root: str) -> tuple:
    """(seconds, images, bytes) to read every image listed in the two image CSVs once."""
    paths = []
    for split in ('train', 'valid'):
        with open(os.path.join(root, f'{split}_image_paths.csv')) as f:
            paths += [line.strip() for line in f if line.strip()]
    parent = os.path.dirname(root)
    start, total = time.perf_counter(), 0
    for rel in paths:
        with open(os.path.join(parent, rel), 'rb') as f:
            total += len(f.read())
    return time.perf_counter() - start, len(paths), total


def build(manual_dir: str, data_dir: str, config: str) -> tuple:
    """(seconds, CPU seconds of this process, examples written, dataset bytes, split sizes) of one
    TFDS build."""
    import tensorflow as tf  # noqa: F401  (imported before timing: the first write would import it)
    import tensorflow_datasets as tfds
    import tfds_mura  # noqa: F401  (registers `mura`)
    tfds.disable_progress_bar()
    builder = tfds.builder(f'mura/{config}', data_dir=data_dir)
    start, cpu_start = time.perf_counter(), time.process_time()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    size = sum(os.path.getsize(os.path.join(builder.data_path, f)) for f in os.listdir(builder.data_path))
    return seconds, cpu_seconds, sum(splits.values()), size, splits


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
    args = parser.parse_args(argv)
    if args.manual_dir and not os.path.isfile(os.path.join(args.manual_dir, 'MURA-v1.1', 'train_image_paths.csv')):
        parser.error(f'--manual_dir={args.manual_dir} holds no MURA-v1.1/train_image_paths.csv')
    scale = QUICK_SCALE if args.quick else args.scale
    workdir = args.workdir or tempfile.mkdtemp(prefix='bench_build_')
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
        floor_seconds, images, image_bytes = read_floor(root)
        build_seconds, build_cpu_seconds, examples, dataset_bytes, splits = build(manual, data, args.config)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        'scale': scale, 'config': args.config, 'images': images, 'examples_written': examples,
        'source_bytes': image_bytes, 'dataset_bytes': dataset_bytes,
        'manual_dir': args.manual_dir,
        'generate_seconds': generate_seconds and round(generate_seconds, 2),
        'read_floor_seconds': round(floor_seconds, 3),
        'build_seconds': round(build_seconds, 2), 'build_cpu_seconds': round(build_cpu_seconds, 2), 'ratio_vs_read_floor': round(build_seconds / floor_seconds, 1),
        'images_per_second': round(images / build_seconds, 1),
        'generate_images_per_second': generate_seconds and round(images / generate_seconds, 1),
        'splits': splits, 'cpus': os.cpu_count(), 'load_average_1min': round(os.getloadavg()[0], 2),
    }
    rows = [('images (listed in CSVs)', f'{images:,}'), ('examples written (all splits)', f'{examples:,}'),
            ('source MiB / dataset MiB', f'{image_bytes / 2**20:,.0f} / {dataset_bytes / 2**20:,.0f}'),
            ('generate s (img/s)', f'{generate_seconds:.1f} ({result["generate_images_per_second"]:.0f})'
             if generate_seconds else f'not generated ({args.manual_dir})'),
            ('read floor s', f'{floor_seconds:.2f}'),
            (f'build mura/{args.config} s (img/s)', f'{build_seconds:.1f} ({result["images_per_second"]:.0f})'),
            ('build CPU s (all threads)', f'{build_cpu_seconds:.1f}'),
            ('build / read floor', f'{result["ratio_vs_read_floor"]:.1f}x')]
    print(f'bench_build: {"scale " + str(scale) if scale else args.manual_dir}, '
          f'load average (1 min) {result["load_average_1min"]}')
    for name, value in rows:
        print(f'  {name:<32}{value:>20}')
    print('  splits: ' + ', '.join(f'{k}={v}' for k, v in splits.items()))
    if args.json:
        io_util.write_json_atomic(args.json, result)
    return 0


if __name__ == '__main__':
    sys.exit(main())
