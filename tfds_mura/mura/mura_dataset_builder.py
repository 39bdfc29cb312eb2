"""The `mura` dataset: MURA-v1.1 musculoskeletal radiographs (manual download).

Configs: ``all`` (default) and one per body part (``mura/elbow`` ...). Splits:
``train`` / ``validation`` (official train set, 80/20 by patient), ``test`` (official
valid set), and the label fractions ``train_10pct`` / ``train_1pct`` (nested, patient
level). See README.md (the dataset card) for how the splits are made.

How it is written: a `ShardBasedBuilder`. Each split's examples are put in an order the builder
shuffles itself (a salted SHA-256 of the image id, per split) and written shard by shard, so
TFDS's shuffler (which serializes every example into temporary bucket files, reads them back and
sorts them) is not needed. Readers shuffle files and examples as before. The shards are written
by `mura_writer` on several threads with the examples encoded directly: the same files, byte for
byte, as TFDS's own shard writer, which `Builder(tfds_writer=True)` still uses (tests and
benchmarks compare the two).
"""
import dataclasses
import functools
import os
import re
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils.shard_utils import ShardConfig

from tfds_mura.mura import mura_images
from tfds_mura.mura import mura_source
from tfds_mura.mura import mura_splits
from tfds_mura.mura import mura_writer
from tfds_mura.mura.mura_source import MuraDataError

PARTS = mura_source.PARTS
_HOMEPAGE = 'https://stanfordmlgroup.github.io/competitions/mura/'
_AIMI_URL = 'https://aimi.stanford.edu/datasets/mura-msk-xrays'
WHERE_TO_GET = (f'Download MURA-v1.1 from the Stanford AIMI site ({_AIMI_URL}) and place the unzipped '
                f'MURA-v1.1/ folder or MURA-v1.1.zip in the manual dir (default <data_dir>/downloads/manual/; '
                f'python -m tfds_mura.build --manual_dir=DIR).')
_ORDER_SALT = 'mura-v1.1/example-order/v1'
# Serialized tf.train.Example bytes beyond the image (ids, label, ...): only sizes the shards.
_EXAMPLE_OVERHEAD_BYTES = 256
# Enough files for file sharding on common host counts (see `number_of_shards`).
HOST_SHARDS = 32
MIN_SHARD_EXAMPLES = 32


@dataclasses.dataclass
class MuraConfig(tfds.core.BuilderConfig):
    """A body part (or ``None`` for all seven parts)."""
    body_part: Optional[str] = None


def _configs() -> List[MuraConfig]:
    configs = [MuraConfig(name='all', description='All seven body parts (40,005 images).')]
    configs += [MuraConfig(name=part, body_part=part, description=f'{part.capitalize()} radiographs only.')
                for part in PARTS]
    return configs


class Builder(tfds.core.ShardBasedBuilder):
    """DatasetBuilder for MURA-v1.1 (manual download; folder or zip)."""

    VERSION = tfds.core.Version('1.2.0')
    RELEASE_NOTES = {
        '1.2.0': 'Same splits, examples and example order as 1.1.0; a split of n examples is cut into '
                 'at least min(32, n // 32) shards (rounded down to a power of two), so input '
                 'pipelines on up to 32 hosts can each read whole files.',
        '1.1.0': 'Same splits, examples and stored image bytes as 1.0.0; written shard by shard in an '
                 'order the builder shuffles itself (salted SHA-256 of the image id per split) instead '
                 'of through the TFDS shuffler, and images that need conversion are converted once: '
                 'a faster build. Only the order of examples on disk differs.',
        '1.0.0': 'Initial release: configs all + 7 body parts; splits train/validation (official train, '
                 '80/20 by patient, salted SHA-256 of the bare patient id), test (official valid), '
                 'train_10pct/train_1pct (nested, patient-level, stratified by part and label).',
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    MURA-v1.1 needs a (free) registration, so it cannot be downloaded automatically.

    1. Request and download MURA-v1.1 from the Stanford AIMI site:
       {_AIMI_URL}
       (the competition page {_HOMEPAGE} links there).
    2. Place either the unzipped `MURA-v1.1/` folder or the unchanged `MURA-v1.1.zip`
       in the manual dir, by default `<data_dir>/downloads/manual/`:

         <manual_dir>/MURA-v1.1/train_image_paths.csv   (and the other 3 CSVs, train/, valid/)
       or
         <manual_dir>/MURA-v1.1.zip

       The zip is read in place, without extracting it.
    3. Build: `python -m tfds_mura.build --manual_dir=<manual_dir> --data_dir=<data_dir>`
       or `tfds build mura --imports tfds_mura --manual_dir=<manual_dir>`.
    """
    BUILDER_CONFIGS = _configs()
    DEFAULT_BUILDER_CONFIG_NAME = 'all'

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(None, None, 1), encoding_format='png',
                                             doc='8-bit grayscale radiograph (original PNG bytes when possible).'),
                'label': tfds.features.ClassLabel(names=['normal', 'abnormal'],
                                                  doc='Study label (negative=normal, positive=abnormal).'),
                'body_part': tfds.features.ClassLabel(names=list(PARTS)),
                'patient_id': tfds.features.Text(doc='Bare patient folder name, e.g. patient00011.'),
                'study_id': tfds.features.Text(doc='e.g. XR_ELBOW/patient00011/study1_negative'),
                'image_id': tfds.features.Text(doc='Path relative to MURA-v1.1/ (= the example key).'),
                'view_index': tfds.features.Scalar(dtype=np.int32,
                                                   doc='0-based view number: M - 1 for imageM.png.'),
            }),
            supervised_keys=('image', 'label'),
            homepage=_HOMEPAGE,
        )

    def __init__(self, *, tfds_writer: bool = False, **kwargs):
        """`tfds_writer=True` writes through TFDS's shard writer instead of `mura_writer` (same files,
        slower); other arguments as for any TFDS builder."""
        super().__init__(**kwargs)
        self._tfds_writer = tfds_writer

    def download_and_prepare(self, *args, **kwargs):  # pylint: disable=arguments-differ
        """As in TFDS; on a MuraDataError also removes the empty folders TFDS made on the way.

        TFDS already deletes its temporary ``incomplete.*`` folder; what would remain is
        ``<data_dir>/mura/{.config,<config>/}`` and ``<data_dir>/downloads/``.
        """
        root = epath.Path(self.data_dir_root)
        watched = [root / self.name, root / 'downloads']
        before = {p: _entries(p) for p in watched}
        try:
            return super().download_and_prepare(*args, **kwargs)
        except MuraDataError:
            for path in watched:
                _remove_new_empty_folders(path, before[path])
            raise

    def _manual_source_dir(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
        try:
            return epath.Path(dl_manager.manual_dir)
        except AssertionError as e:  # TFDS: manual dir not enabled, missing or empty
            found = re.search(r'Manual directory (.*) does not exist or is empty', str(e))
            what = f'Manual dir {found.group(1)} does not exist or is empty.' if found else str(e).splitlines()[0]
            raise MuraDataError(f'{what} {WHERE_TO_GET}') from None

    def _plan(self, dl_manager: tfds.download.DownloadManager, defer_gray8: bool = False
              ) -> Tuple[epath.Path, Dict[str, List[list]], Dict[str, bytes], set]:
        """(manual dir, split -> its shards' records in writing order, key -> converted PNG bytes,
        keys of images still to be checked).

        Every image is checked (and converted where needed) here, before anything is written;
        with `defer_gray8`, 8-bit gray PNGs (stored as they are) are only recognised by their
        header here and are left to be checked by the writer when it reads them.
        """
        manual_dir = self._manual_source_dir(dl_manager)
        part = self.builder_config.body_part
        name = self.builder_config.name
        with mura_source.open_source(manual_dir, WHERE_TO_GET) as source:
            records = [r for r in mura_source.read_records(source) if part is None or r.part == part]
            if not records:
                raise MuraDataError(f'The MURA CSVs in {source.description} list no {part} images.')
            started = time.time()
            converted, sizes, deferred = mura_source.prepare_images(
                source, records, mura_images.prepare_image,
                is_gray8_header=mura_images.starts_gray8_png if defer_gray8 else None,
                header_bytes=mura_images.PNG_HEADER_BYTES)
            logging.info('mura/%s: scanned %d images in %.1f s (%s); %d converted to 8-bit gray, %d to check '
                         'while writing', name, len(records), time.time() - started, source.description,
                         len(converted), len(deferred))
        shared = ({r.patient_id for r in records if r.official_split == 'train'}
                  & {r.patient_id for r in records if r.official_split == 'valid'})
        if shared:  # the official splits are patient-disjoint; a modified copy may not be
            logging.warning('mura/%s: %d patient id(s) occur in both official train and valid, e.g. %s; '
                            'test is then not patient-disjoint from train.', name, len(shared), sorted(shared)[0])
        splits = mura_splits.make_splits(records)
        empty = [split for split, rs in splits.items() if not rs]
        if empty:
            raise MuraDataError(f'Too few patients for mura/{name}: split(s) {", ".join(empty)} '
                                f'would be empty ({len(records)} images in total).')
        for split, images, abnormal, patients in mura_splits.split_summary(splits):
            logging.info('mura/%s %s: %d images (%d abnormal), %d patients', name, split, images, abnormal,
                         patients)
        return (manual_dir, {split: shard_records(split, rs, sizes) for split, rs in splits.items()}, converted,
                deferred)

    def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager,
                              download_config: Optional[tfds.download.DownloadConfig] = None) -> None:
        if self._tfds_writer or self.info.file_format != tfds.core.FileFormat.TFRECORD:
            return super()._download_and_prepare(dl_manager, download_config)
        manual_dir, shards, converted, deferred = self._plan(dl_manager, defer_gray8=True)
        started = time.time()
        problems = {}
        with mura_source.open_source(manual_dir, WHERE_TO_GET) as source:
            def serialize(record) -> Optional[bytes]:
                png = converted.get(record.key)
                if png is None:
                    png = _read_checked(source, record)
                    if record.key in deferred:
                        try:
                            mura_images.check_png(png)
                        except mura_images.ImageProblem as e:
                            problems[record.key] = f'{record.key} ({e})'  # the build fails after the check
                            return None
                return encoder.encode(_example(record, png), _values(record, png))

            first = next(iter(shards.values()))[0][0]
            encoder = mura_writer.ExampleEncoder(self.info.features, _example(first, b''), _values(first, b''))
            if not encoder.exact:
                logging.warning('mura/%s: the direct example encoding differs from TFDS\'s here (another '
                                'protobuf or TFDS version?); serializing through TFDS instead (slower).',
                                self.builder_config.name)
            jobs, templates = [], {}
            for split, split_shards in shards.items():
                templates[split] = self._get_filename_template(split_name=split)
                jobs += [mura_writer.ShardJob(os.fspath(templates[split].sharded_filepath(
                    shard_index=i, num_shards=len(split_shards))), shard) for i, shard in enumerate(split_shards)]
            sizes = iter(mura_writer.write_shards(jobs, serialize, threads=mura_source.BUILD_THREADS))
            if problems:  # TFDS then deletes the unfinished dataset
                raise mura_source.undecodable_images_error(source, [problems[k] for k in sorted(problems)])
        self.info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=split, shard_lengths=[len(shard) for shard in split_shards],
                                num_bytes=sum(next(sizes) for _ in split_shards), filename_template=templates[split])
            for split, split_shards in shards.items()]))
        logging.info('mura/%s: checked the rest and wrote %d shards in %.1f s', self.builder_config.name,
                     len(jobs), time.time() - started)

    def _shard_iterators_per_split(self, dl_manager: tfds.download.DownloadManager
                                   ) -> Dict[str, List[Callable[[], Iterator[Tuple[str, dict]]]]]:
        manual_dir, shards, converted, _ = self._plan(dl_manager)
        return {split: [functools.partial(self._generate_examples, manual_dir, split, shard, converted)
                        for shard in split_shards]
                for split, split_shards in shards.items()}

    def _generate_examples(self, manual_dir: epath.Path, split: str, records: Sequence,
                           converted: Dict[str, bytes]) -> Iterator[Tuple[str, dict]]:
        """Yields (image path relative to MURA-v1.1, features) of one shard, in `records` order.

        Images were checked before: those in ``converted`` are stored as converted there (8-bit
        gray PNG), all others byte for byte.
        """
        started = time.time()
        with mura_source.open_source(manual_dir, WHERE_TO_GET) as source:
            for r in records:
                png = converted.get(r.key)
                yield r.key, _example(r, png if png is not None else _read_checked(source, r))
        logging.info('mura/%s %s: wrote a shard of %d examples in %.1f s', self.builder_config.name, split,
                     len(records), time.time() - started)


def _read_checked(source: mura_source.MuraSource, record) -> bytes:
    """The image bytes of a record; a read error now (the file changed or went since the scan) is a
    MuraDataError."""
    try:
        return source.read_bytes(record.key)
    except OSError as e:
        raise MuraDataError(f'Cannot read {record.key} from {source.description}: {e}') from e


def _example(record, png: bytes) -> dict:
    """One example as TFDS's FeatureConnectors take it."""
    return {'image': png, 'label': record.label, 'body_part': record.part, 'patient_id': record.patient_id,
            'study_id': record.study_id, 'image_id': record.key, 'view_index': record.view_index}


_PART_INDEX = {part: i for i, part in enumerate(PARTS)}


def _values(record, png: bytes) -> Dict[str, object]:
    """The same example as its serialized values: class indices and UTF-8 bytes."""
    return {'image': png, 'label': record.label, 'body_part': _PART_INDEX[record.part],
            'patient_id': record.patient_id.encode('utf-8'), 'study_id': record.study_id.encode('utf-8'),
            'image_id': record.key.encode('utf-8'), 'view_index': record.view_index}


def example_order(split: str, records: Sequence) -> list:
    """`records` sorted by a salted SHA-256 of their key (different per split): a fixed shuffle."""
    return sorted(records, key=lambda r: (mura_splits.stable_unit(r.key, f'{_ORDER_SALT}/{split}'), r.key))


def number_of_shards(total_bytes: int, num_examples: int) -> int:
    """Shards of a split: as many as TFDS would make for its size (`ShardConfig`), but at least
    the largest power of two <= min(HOST_SHARDS, num_examples // MIN_SHARD_EXAMPLES).

    Readers on several hosts shard by files when a split has at least as many files as hosts
    (`simclr_mura.data.pipeline_split`), so a split of >= 1024 examples has >= 32 files (1, 2, 4,
    8, 16 or 32 hosts each get whole files, evenly); smaller splits are read by examples."""
    by_hosts = 1
    while by_hosts * 2 <= min(HOST_SHARDS, num_examples // MIN_SHARD_EXAMPLES):
        by_hosts *= 2
    return max(ShardConfig.calculate_number_shards(total_bytes, num_examples), by_hosts)


def shard_records(split: str, records: Sequence, sizes: Dict[str, int]) -> List[list]:
    """The split's records in `example_order`, cut into `number_of_shards` shards with equal
    example counts (+-1) as TFDS cuts them."""
    ordered = example_order(split, records)
    total = sum(sizes[r.key] + _EXAMPLE_OVERHEAD_BYTES for r in ordered)
    num_shards = number_of_shards(total, len(ordered))
    bounds = [round(len(ordered) * i / num_shards) for i in range(num_shards + 1)]
    return [ordered[start:end] for start, end in zip(bounds, bounds[1:])]


def _holds_files(path: epath.Path) -> bool:
    return any(p.is_file() or _holds_files(p) for p in path.iterdir())


def _entries(path: epath.Path) -> Optional[set]:
    """Names inside ``path`` (None when it does not exist)."""
    return {p.name for p in path.iterdir()} if path.is_dir() else None


def _remove_new_empty_folders(root: epath.Path, before: Optional[set]) -> None:
    """After a failed build: deletes what the build added under ``root`` if it holds no
    file; ``root`` itself goes when the build created it and only TFDS bookkeeping
    (``.config``) is left in it."""
    if not root.is_dir():
        return
    for sub in list(root.iterdir()):
        if sub.is_dir() and sub.name != '.config' and sub.name not in (before or ()) and not _holds_files(sub):
            sub.rmtree()
    if before is None and all(p.name == '.config' for p in root.iterdir()):
        root.rmtree()


def config_names() -> Dict[str, Optional[str]]:
    """Config name -> body part (None for ``all``)."""
    return {c.name: c.body_part for c in Builder.BUILDER_CONFIGS}
