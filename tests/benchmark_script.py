"""Runs a script of benchmarks/ in a subprocess, as the benchmark tests do (they assert no timings)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script: str, args, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python benchmarks/<script> <args>` from the repository root, TF quiet and on CPU."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
    return subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', script), *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
