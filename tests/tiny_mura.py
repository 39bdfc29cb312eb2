"""A tiny synthetic `mura/elbow` TFDS dataset, built once per test session (shared by test files).

Synthetic MURA-v1.1 at scale 0.01, elbow only (38 train, 11 validation, 4 test, 6 train_1pct
images), written by `tfds_mura.synthetic` and built with the `mura` TFDS builder.
"""
import os

import tensorflow_datasets as tfds

DATASET = 'mura/elbow'
_CACHE = {}


def build(base_dir: str) -> str:
    """Builds the dataset under `base_dir` the first time; returns its TFDS data_dir."""
    if 'data_dir' not in _CACHE:
        import tfds_mura  # noqa: F401  (registers the builder)
        from tfds_mura import synthetic
        manual = os.path.join(base_dir, 'manual')
        data_dir = os.path.join(base_dir, 'tfds')
        synthetic.write_synthetic_mura(manual, scale=0.01, parts=['elbow'], seed=0, workers=1)
        builder = tfds.builder(DATASET, data_dir=data_dir)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
        _CACHE['data_dir'] = data_dir
    return _CACHE['data_dir']
