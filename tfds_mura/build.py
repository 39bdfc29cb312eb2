"""Builds the `mura` TFDS dataset from a manually downloaded MURA-v1.1.

  python -m tfds_mura.build --manual_dir=DIR --data_dir=DIR2 [--config=elbow] [--overwrite]

DIR holds the unzipped ``MURA-v1.1/`` folder or ``MURA-v1.1.zip``. Each config is built
once; a later run reuses it (and says so) unless ``--overwrite`` is given, which rebuilds into a
temporary data dir and replaces the old build only when the new one is complete. Bad input ends
with one ``error: ...`` line on stderr and exit code 1.
"""
import dataclasses
import os
import sys
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from tfds_mura.mura import mura_dataset_builder
from tfds_mura.mura.mura_source import MuraDataError


@dataclasses.dataclass
class BuildResult:
    """What ``build_dataset`` did for one config."""
    name: str                     # e.g. 'mura/elbow'
    data_path: str                # <data_dir>/mura/<config>/<version>
    reused: bool                  # True when an existing build was reused
    seconds: float
    splits: Dict[str, int]        # split -> number of examples
    num_bytes: int


def build_dataset(manual_dir: Optional[str], data_dir: Optional[str], config: str = 'all',
                  overwrite: bool = False, log: Callable[[str], None] = logging.info) -> BuildResult:
    """Builds (or reuses) ``mura/<config>`` in ``data_dir`` from ``manual_dir``.

    Raises:
      MuraDataError: unknown config, or missing/malformed MURA input (nothing is left behind).
    """
    if config not in mura_dataset_builder.config_names():
        raise MuraDataError(f'Unknown config {config!r}; choose from {", ".join(mura_dataset_builder.config_names())}.')
    builder = mura_dataset_builder.Builder(config=config, data_dir=data_dir)
    name = f'mura/{config}'
    start = time.time()
    reused = builder.is_prepared() and not overwrite
    if reused:
        log(f'{name} {builder.version} already exists at {builder.data_path}; reusing it '
            f'(pass --overwrite to rebuild).')
    else:
        log(f'Building {name} {builder.version} from {manual_dir} into {builder.data_path}')
        if overwrite and builder.is_prepared():
            builder = _rebuild_then_replace(builder, manual_dir, config, data_dir)
        else:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    splits = {split: info.num_examples for split, info in builder.info.splits.items()}
    num_bytes = sum(info.num_bytes for info in builder.info.splits.values())
    return BuildResult(name=name, data_path=str(builder.data_path), reused=reused,
                       seconds=time.time() - start, splits=splits, num_bytes=num_bytes)


def _rebuild_then_replace(builder, manual_dir: Optional[str], config: str, data_dir: Optional[str]):
    """--overwrite of an existing build: builds into a temporary data dir and swaps it in only when
    complete (TFDS's own overwrite deletes the old build first, so bad input would lose it)."""
    old = os.fspath(builder.data_path)  # <root>/mura/<config>/<version>
    root = os.path.dirname(os.path.dirname(os.path.dirname(old)))
    tmp_root = os.path.join(root, f'.mura-rebuild-{uuid.uuid4().hex[:8]}')
    try:
        fresh = mura_dataset_builder.Builder(config=config, data_dir=tmp_root)
        fresh.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        aside = f'{old}.replaced-{uuid.uuid4().hex[:8]}'
        tf.io.gfile.rename(old, aside)
        tf.io.gfile.rename(os.fspath(fresh.data_path), old)
        tf.io.gfile.rmtree(aside)
    finally:
        if tf.io.gfile.exists(tmp_root):
            tf.io.gfile.rmtree(tmp_root)
    return mura_dataset_builder.Builder(config=config, data_dir=data_dir)


def format_result(result: BuildResult) -> str:
    """A small table: one row per split, with the total."""
    how = 'reused existing data' if result.reused else f'built in {result.seconds:.1f} s'
    lines = [f'{result.name} at {result.data_path} ({how})', f'  {"split":<12}{"examples":>10}']
    lines += [f'  {split:<12}{n:>10}' for split, n in result.splits.items()]
    lines.append(f'  {"total":<12}{sum(result.splits.values()):>10}  ({result.num_bytes / 2**20:.1f} MiB)')
    return '\n'.join(lines)


def _define_flags() -> None:
    # Defined only when run as a program, so importing this module adds no global flags.
    flags.DEFINE_string('manual_dir', None, 'Folder holding MURA-v1.1/ or MURA-v1.1.zip.', required=True)
    flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).')
    flags.DEFINE_list('config', ['all'], 'Config(s) to build: all, ' + ', '.join(mura_dataset_builder.PARTS) + '.')
    flags.DEFINE_bool('overwrite', False, 'Rebuild even if the config was already built.')


def run(manual_dir: str, data_dir: Optional[str], configs: Sequence[str], overwrite: bool) -> int:
    """Builds each config, prints its split table; returns the process exit code."""
    tfds.disable_progress_bar()  # the builder logs progress lines instead of redrawing bars
    results: List[BuildResult] = []
    try:
        for config in configs:
            results.append(build_dataset(manual_dir, data_dir, config, overwrite))
    except MuraDataError as e:
        print('error: ' + ' '.join(str(e).split()), file=sys.stderr)
        return 1
    for result in results:
        print(format_result(result))
    return 0


def main(argv: Sequence[str]) -> int:
    """absl entry point."""
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    flag_values = flags.FLAGS
    logging.set_verbosity(logging.INFO)
    return run(flag_values.manual_dir, flag_values.data_dir, flag_values.config, flag_values.overwrite)


if __name__ == '__main__':
    _define_flags()
    app.run(main)
