"""NT-Xent contrastive loss: time and memory against the global batch, and where memory ends.

  python benchmarks/bench_loss.py [--batches 64,128,...,4096] [--dim 128] [--reps 5] [--quick]
      [--json FILE]

For each global batch N (two-view pairs, one replica, so every row sees all N negatives) the
loss of `simclr_mura.objective.add_contrastive_loss` (l2-normalised rows, temperature 0.1) and
its gradient with respect to the (2N, dim) embeddings run in one compiled function:
* time: median of --reps calls after one untimed call (tracing);
* measured peak: TensorFlow's CPU allocator peak during those calls, above what was allocated
  before them (tf.config.experimental.get_memory_info);
* computed: the bytes of the two (N, 2N) logits matrices the cross-entropies read (what grows as
  N^2 by construction) and of their gradients, 32 N^2 bytes in float32.
The loss is O(N^2) in time and memory while the embeddings are O(N), so the per-N^2 constant of
the measured peaks (largest batches) extrapolates where the loss alone fills a 16 GB or 80 GB
accelerator; the model's own activations come on top. (No accelerator runs TensorFlow here.)
With R replicas each holds B = N/R rows against all N columns, so its share is 1/R of the
figures for the same global N.
"""
import argparse
import json
import os
import platform
import sys
import time
from typing import Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The allocator peak is read from TensorFlow's memory statistics, which its CPU allocator keeps only
# as a BFC allocator (TF 2.21's default CPU allocator raises "Cannot reset memory stats").
os.environ.setdefault('TF_CPU_ALLOCATOR_USE_BFC', 'true')

import tensorflow as tf  # noqa: E402

from simclr_mura import objective  # noqa: E402

DEFAULT_BATCHES = (64, 128, 256, 512, 1024, 2048, 4096)
QUICK_BATCHES = (64, 128, 256, 512, 1024)
TEMPERATURE = 0.1  # the port's default --temperature
ACCELERATORS_GB = {'16 GB': 16, '80 GB': 80}
GIB = 2**30


def logits_bytes(batch: int) -> int:
    """The two (N, 2N) float32 logits the cross-entropies read, one per direction."""
    return 2 * batch * 2 * batch * 4


def loss_and_gradient_fn(dim: int):
    """A compiled (2N, dim) embeddings -> (loss, d loss / d embeddings)."""
    @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32)])
    def loss_and_gradient(hidden):
        with tf.GradientTape() as tape:
            tape.watch(hidden)
            loss, _, _ = objective.add_contrastive_loss(hidden, hidden_norm=True,
                                                        temperature=TEMPERATURE)
        return loss, tape.gradient(loss, hidden)
    return loss_and_gradient


def measure(fn, batch: int, dim: int, reps: int) -> Dict[str, float]:
    """Median seconds and allocator peak (bytes above the starting level) of `reps` calls."""
    hidden = tf.constant(np.random.default_rng(batch).normal(size=(2 * batch, dim)), tf.float32)
    fn(hidden)[1].numpy()  # traces once (shapes are dynamic) and warms the allocator
    tf.config.experimental.reset_memory_stats('CPU:0')
    before = tf.config.experimental.get_memory_info('CPU:0')['current']
    times, cpu_times = [], []
    for _ in range(reps):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss, grad = fn(hidden)
        grad.numpy()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    if not np.isfinite(float(loss)):
        raise RuntimeError(f'the loss at batch {batch} is not finite: {float(loss)}')
    peak = tf.config.experimental.get_memory_info('CPU:0')['peak'] - before
    # Forward: four (N, N) matmuls of depth dim; backward: two more per matmul.
    flops = 3 * 4 * 2 * batch * batch * dim
    seconds = float(np.median(times))
    return {'batch': batch, 'median_s': seconds, 'cpu_median_s': float(np.median(cpu_times)),
            'times_s': [round(t, 5) for t in times], 'gflop_per_s': flops / seconds / 1e9,
            'measured_peak_bytes': int(peak), 'logits_bytes': logits_bytes(batch),
            'logits_and_grad_bytes': 2 * logits_bytes(batch)}


def memory_limits(rows: List[dict]) -> Dict[str, dict]:
    """Largest global batch whose loss fits each accelerator, from the measured N^2 constant
    (the largest of the two biggest batches, so overhead at small N does not lower it) and from
    the logits + gradients alone (the floor any implementation of this loss pays)."""
    per_n2 = max(r['measured_peak_bytes'] / r['batch']**2 for r in rows[-2:])
    limits = {}
    for label, gb in ACCELERATORS_GB.items():
        capacity = gb * 10**9
        limits[label] = {'max_batch_measured_constant': int(np.sqrt(capacity / per_n2)),
                         'max_batch_logits_and_grad_only': int(np.sqrt(capacity / 32))}
    return {'measured_bytes_per_n2': per_n2, 'logits_and_grad_bytes_per_n2': 32,
            'accelerators': limits}


def print_table(rows: List[dict], limits: dict) -> None:
    """The measurements and the computed limits as fixed-width text."""
    print(f'  {"batch N":>8}{"median s":>11}{"CPU s":>9}{"GFLOP/s":>9}{"time / N^2 (ns)":>17}'
          f'{"peak MiB":>10}{"logits MiB":>12}{"peak / N^2 (B)":>16}')
    for r in rows:
        n2 = r['batch']**2
        print(f'  {r["batch"]:>8}{r["median_s"]:>11.4f}{r["cpu_median_s"]:>9.3f}'
              f'{r["gflop_per_s"]:>9.1f}{r["median_s"] / n2 * 1e9:>17.2f}'
              f'{r["measured_peak_bytes"] / 2**20:>10.1f}{r["logits_bytes"] / 2**20:>12.1f}'
              f'{r["measured_peak_bytes"] / n2:>16.1f}')
    print(f'  where the loss alone fills an accelerator (one replica, float32; '
          f'{limits["measured_bytes_per_n2"]:.1f} B per N^2 measured, 32 B for logits + gradients):')
    for label, row in limits['accelerators'].items():
        print(f'    {label}: N <= {row["max_batch_measured_constant"]:,} at the measured constant, '
              f'<= {row["max_batch_logits_and_grad_only"]:,} for the logits and their gradients alone')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batches', help='comma-separated global batches (default 64..4096; '
                                          '64..1024 with --quick)')
    parser.add_argument('--dim', type=int, default=128, help='embedding width (proj_out_dim)')
    parser.add_argument('--reps', type=int, help='timed calls per batch (default 5; 3 with --quick)')
    parser.add_argument('--quick', action='store_true', help='batches 64..1024, 3 calls each')
    parser.add_argument('--json', help='write the results to this JSON file')
    args = parser.parse_args(argv)
    try:
        batches = ([int(b) for b in args.batches.split(',')] if args.batches
                   else list(QUICK_BATCHES if args.quick else DEFAULT_BATCHES))
    except ValueError:
        parser.error(f'--batches={args.batches!r} must be comma-separated integers, e.g. 64,256,1024')
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    problems = []
    if any(b < 2 for b in batches):
        problems.append(f'--batches={args.batches} must all be >= 2 (a row needs a negative)')
    if args.dim < 1 or args.reps < 1:
        problems.append(f'--dim={args.dim} and --reps={args.reps} must be >= 1')
    if problems:
        parser.error('; '.join(problems))
    args.batches = sorted(set(batches))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    print(f'bench_loss: NT-Xent forward + backward, dim {args.dim}, {args.reps} timed calls per '
          f'batch; load average {load_before[0]:.2f}', flush=True)
    fn = loss_and_gradient_fn(args.dim)
    rows = []
    for batch in args.batches:
        rows.append(measure(fn, batch, args.dim, args.reps))
        print(f'  N={batch}: {rows[-1]["median_s"]:.4f} s, peak '
              f'{rows[-1]["measured_peak_bytes"] / 2**20:.1f} MiB', flush=True)
    limits = memory_limits(rows)
    load_after = os.getloadavg()
    print('bench_loss: median seconds of loss + gradient; peak = CPU allocator peak above the '
          'starting level')
    print_table(rows, limits)
    print(f'  machine: {os.cpu_count()} CPUs, {platform.platform()}, TF {tf.__version__}, '
          f'load average before {load_before[0]:.2f}, after {load_after[0]:.2f}')
    if args.json:
        output = {'settings': {'batches': args.batches, 'dim': args.dim, 'reps': args.reps,
                               'temperature': TEMPERATURE, 'quick': args.quick},
                  'results': rows, 'memory_limits': limits,
                  'machine': {'cpu_count': os.cpu_count(), 'platform': platform.platform(),
                              'tensorflow': tf.__version__,
                              'load_average_before': [round(x, 2) for x in load_before],
                              'load_average_after': [round(x, 2) for x in load_after]}}
        with open(args.json, 'w') as f:
            json.dump(output, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
