"""Tests for the `mura` TFDS builder (tfds_mura.mura) and its build CLI (tfds_mura.build).

Builds run on small synthetic trees (tfds_mura.synthetic) and on copies of the builder's
dummy_data/ that are damaged on purpose. The DatasetBuilderTestCase on dummy_data/ is in
tfds_mura/mura/mura_dataset_builder_test.py.
"""
import collections
import io
import os
import random
import shutil
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image
from PIL import PngImagePlugin
import pytest
import tensorflow_datasets as tfds

import tfds_mura
from tfds_mura import build
from tfds_mura import synthetic
from tfds_mura.mura import mura_dataset_builder
from tfds_mura.mura import mura_images
from tfds_mura.mura import mura_source
from tfds_mura.mura import mura_splits

DUMMY = os.path.join(os.path.dirname(tfds_mura.__file__), 'mura', 'dummy_data')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ('train', 'validation', 'test', 'train_10pct', 'train_1pct')

tfds.disable_progress_bar()


def _build(manual_dir, data_dir, config='all', **builder_kwargs):
    builder = tfds.builder(f'mura/{config}', data_dir=str(data_dir), **builder_kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _examples(builder, split):
    """All examples of a split in file order (one file after the other), image bytes undecoded."""
    ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(interleave_cycle_length=1))
    return list(tfds.as_numpy(ds))


def _zip_tree(manual_dir, zip_path, extra=None):
    with zipfile.ZipFile(zip_path, 'w', zipfile.ZIP_STORED) as zf:
        for folder, _, files in os.walk(os.path.join(manual_dir, 'MURA-v1.1')):
            for name in files:
                path = os.path.join(folder, name)
                zf.write(path, os.path.relpath(path, manual_dir))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)


def _add_text_chunks(summary, every=5):
    """Re-saves some gray images with a tEXt chunk and maximal compression, as other software
    would write them: a decode + re-encode could then never reproduce their bytes."""
    rgb = set(summary.rgb_images)
    keys = [f'{s.path}/image{v}.png' for s in summary.studies for v in range(1, s.views + 1)]
    for key in [k for k in keys if k not in rgb][::every]:
        path = os.path.join(summary.root, key)
        info = PngImagePlugin.PngInfo()
        info.add_text('Software', 'a PACS exporter')
        Image.open(path).save(path, format='PNG', pnginfo=info, compress_level=9)


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    """A synthetic tree (3 parts, with quirks and 15% RGB images) and a zip of it."""
    base = tmp_path_factory.mktemp('mura_tree')
    summary = synthetic.write_synthetic_mura(str(base / 'folder'), scale=0.01, parts=('elbow', 'hand', 'wrist'),
                                             seed=11, quirks=True, rgb_fraction=0.15)
    _add_text_chunks(summary)
    (base / 'zip').mkdir()
    _zip_tree(str(base / 'folder'), str(base / 'zip' / 'MURA-v1.1.zip'))
    return base, summary


@pytest.fixture(scope='module')
def built(tree, tmp_path_factory):
    """mura/all built from the folder, and its examples per split."""
    base, _ = tree
    builder = _build(base / 'folder', tmp_path_factory.mktemp('data_a'))
    return builder, {split: _examples(builder, split) for split in SPLITS}


def _csv_rows(root, name):
    with open(os.path.join(root, name)) as f:
        return [line for line in f.read().splitlines() if line]


def test_split_counts_equal_the_csv_rows(tree, built):
    _, summary = tree
    builder, examples = built
    train_rows = {r[len('MURA-v1.1/'):] for r in _csv_rows(summary.root, 'train_image_paths.csv')}
    valid_rows = {r[len('MURA-v1.1/'):] for r in _csv_rows(summary.root, 'valid_image_paths.csv')}
    ids = {split: [ex['image_id'].decode() for ex in exs] for split, exs in examples.items()}
    assert sorted(ids['train'] + ids['validation']) == sorted(train_rows)  # sidecars and .DS_Store ignored
    assert sorted(ids['test']) == sorted(valid_rows)
    for split in SPLITS:
        assert builder.info.splits[split].num_examples == len(examples[split]) > 0
    labels = dict(r.split(',') for r in _csv_rows(summary.root, 'train_labeled_studies.csv'))
    for ex in examples['train']:
        key = ex['image_id'].decode()
        assert labels['MURA-v1.1/' + key[:key.rfind('/') + 1]] == str(ex['label'])
        assert key.endswith(f"/image{ex['view_index'] + 1}.png")
        assert key.split('/')[2] == ex['patient_id'].decode()
        assert ex['study_id'].decode() == key.split('/', 1)[1].rsplit('/', 1)[0]
        assert builder.info.features['body_part'].int2str(ex['body_part']) == key.split('/')[1][3:].lower()


def test_splits_are_patient_disjoint_and_fractions_nested(built):
    _, examples = built
    patients = {s: {ex['patient_id'] for ex in exs} for s, exs in examples.items()}
    keys = {s: {ex['image_id'] for ex in exs} for s, exs in examples.items()}
    assert not patients['train'] & patients['validation']
    assert not patients['test'] & (patients['train'] | patients['validation'])
    assert keys['train_1pct'] <= keys['train_10pct'] <= keys['train']
    # Whole patients: a selected patient brings all of its train images.
    for split in ('train_10pct', 'train_1pct'):
        assert {ex['image_id'] for ex in examples['train'] if ex['patient_id'] in patients[split]} == keys[split]
        assert {ex['label'] for ex in examples[split]} == {0, 1}
    assert len(keys['train_1pct']) < len(keys['train_10pct']) < len(keys['train'])


def _plan_records(scale, part=None):
    records = []
    for s in synthetic.plan_synthetic_mura(scale):
        if part in (None, s.part):
            records += [mura_source.MuraRecord(f'{s.path}/image{v + 1}.png', s.split, s.part, f'patient{s.patient:05d}',
                                               s.path.split('/', 1)[1], v, int(s.abnormal)) for v in range(s.views)]
    return records


@pytest.mark.parametrize('part', [None, 'elbow', 'humerus'])
def test_fraction_sizes_within_the_stated_tolerance_at_real_scale(part):
    splits = mura_splits.make_splits(_plan_records(1.0, part))
    n_train = len(splits['train'])
    assert 0.15 < len(splits['validation']) / (n_train + len(splits['validation'])) < 0.25
    for name, fraction in mura_splits.LABEL_FRACTIONS:
        target = fraction * n_train
        assert abs(len(splits[name]) - target) <= mura_splits.fraction_tolerance(target), name
        abnormal_share = np.mean([r.label for r in splits[name]])
        assert abs(abnormal_share - np.mean([r.label for r in splits['train']])) < 0.05
    keys = {name: {r.key for r in rs} for name, rs in splits.items()}
    assert keys['train_1pct'] <= keys['train_10pct'] <= keys['train']


def test_train_1pct_is_chosen_from_the_patients_of_train_10pct():
    # Patients with two or three parts of mixed labels: choosing 1pct from all of train would pick
    # patients outside 10pct here, so nesting does not follow from the shared hash order alone.
    rng = random.Random(1)
    records = []
    for i in range(rng.choice([200, 400, 800])):
        for part in rng.sample(['elbow', 'hand', 'wrist'], rng.choice([1, 2, 3])):
            label = int(rng.random() < 0.4)
            records += [mura_source.MuraRecord(f'p{i}_{part}_{v}', 'train', part, f'patient{i:05d}',
                                               f'p{i}_{part}', v, label) for v in range(rng.randint(1, 6))]
    splits = mura_splits.make_splits(records)
    patients = {name: {r.patient_id for r in rs} for name, rs in splits.items()}
    assert patients['train_1pct'] <= patients['train_10pct'] <= patients['train']
    assert patients['train_1pct'] == mura_splits.select_patients(splits['train'], 0.01,
                                                                 patients['train_10pct'])


def test_patient_grouping_uses_the_bare_id_across_parts():
    rec = lambda key, part, pid, label: mura_source.MuraRecord(key, 'train', part, pid, key, 0, label)  # noqa: E731
    records = [rec(f'e{i}', 'elbow', f'patient{i:05d}', i % 2) for i in range(1, 200)]
    records += [rec(f'h{i}', 'hand', f'patient{i:05d}', 1 - i % 2) for i in range(1, 200)]
    splits = mura_splits.make_splits(records)
    for name in SPLITS[:2] + SPLITS[3:]:
        parts_per_patient = collections.Counter(r.patient_id for r in splits[name])
        assert set(parts_per_patient.values()) == {2}, name  # elbow and hand of a patient stay together


def test_build_is_deterministic_and_zip_equals_folder(tree, built, tmp_path):
    base, _ = tree
    builder_a, _ = built
    builder_b = _build(base / 'folder', tmp_path / 'b')
    builder_z = _build(base / 'zip', tmp_path / 'z')
    files = sorted(f for f in os.listdir(builder_a.data_path) if '.tfrecord' in f)
    assert files and files == sorted(f for f in os.listdir(builder_z.data_path) if '.tfrecord' in f)
    for name in files:
        data = (builder_a.data_path / name).read_bytes()
        assert data == (builder_b.data_path / name).read_bytes() == (builder_z.data_path / name).read_bytes()


def test_mura_writer_writes_the_same_files_as_tfds_writer(tree, built, tmp_path):
    # The default writer (mura_writer: direct example encoding, shards on threads) against TFDS's
    # own shard writer on the same zip: every file of the dataset folder, JSON metadata included.
    base, _ = tree
    builder, _ = built
    reference = _build(base / 'zip', tmp_path / 'tfds', tfds_writer=True)
    names = sorted(os.listdir(builder.data_path))
    assert sum('.tfrecord' in n for n in names) >= 5 and names == sorted(os.listdir(reference.data_path))
    for name in names:
        assert (builder.data_path / name).read_bytes() == (reference.data_path / name).read_bytes(), name
    assert builder.info.splits['train'].shard_lengths == reference.info.splits['train'].shard_lengths


def test_gray_pngs_pass_through_and_rgb_is_converted(tree, built):
    _, summary = tree
    builder, examples = built
    rgb = set(summary.rgb_images)
    seen_rgb = with_text = 0
    for ex in examples['train'] + examples['test']:
        key = ex['image_id'].decode()
        with open(os.path.join(summary.root, key), 'rb') as f:
            original = f.read()
        if key in rgb:
            seen_rgb += 1
            assert ex['image'] != original
            stored = Image.open(io.BytesIO(ex['image']))
            assert stored.mode == 'L'
            assert np.array_equal(np.asarray(stored), np.asarray(Image.open(io.BytesIO(original)))[..., 0])
        else:
            assert ex['image'] == original
            with_text += b'tEXt' in original
    assert seen_rgb >= 3 and with_text >= 10
    decoded = next(iter(builder.as_dataset(split='train_1pct')))
    assert decoded['image'].shape[-1] == 1 and decoded['image'].dtype.name == 'uint8'


def test_examples_are_written_in_the_builders_fixed_shuffle(tree, built):
    # Since 1.1.0 each split is written shard by shard in `example_order` (no TFDS shuffler), with
    # the shard count of `number_of_shards`; converted images hold exactly
    # the bytes of one `decode_to_gray_png`, as in 1.0.0.
    _, summary = tree
    builder, examples = built
    rgb = set(summary.rgb_images)
    for split in SPLITS:
        ids = [ex['image_id'].decode() for ex in examples[split]]  # files in order, not shuffled
        records = [_Record(key) for key in ids]
        expected = [r.key for r in mura_dataset_builder.example_order(split, records)]
        assert ids == expected
        sizes = {ex['image_id'].decode(): len(ex['image']) for ex in examples[split]}
        shards = mura_dataset_builder.shard_records(split, records, sizes)
        assert builder.info.splits[split].shard_lengths == [len(shard) for shard in shards]
    train_ids = [ex['image_id'].decode() for ex in examples['train']]
    assert train_ids != sorted(train_ids)
    for ex in examples['train']:
        key = ex['image_id'].decode()
        if key in rgb:
            with open(os.path.join(summary.root, key), 'rb') as f:
                assert ex['image'] == mura_images.decode_to_gray_png(f.read())[0]


class _Record:
    def __init__(self, key):
        self.key = key


def _png(img, **save_args):
    buf = io.BytesIO()
    img.save(buf, format='PNG', **save_args)
    return buf.getvalue()


def test_prepare_image_converts_every_png_kind_to_gray8():
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    base = Image.fromarray(gray, 'L')
    plain = _png(base)
    assert mura_images.prepare_image(plain) == (plain, False)
    variants = {
        'RGB': base.convert('RGB'), 'RGBA': base.convert('RGBA'), 'LA': base.convert('LA'),
        'P': base.convert('RGB').quantize(colors=256), '16-bit': Image.fromarray(gray.astype(np.uint16) * 257),
    }
    for name, img in variants.items():
        stored, converted = mura_images.prepare_image(_png(img))
        assert converted, name
        header = mura_images.check_png(stored)
        assert header.is_gray8 and (header.width, header.height) == (10, 6), name
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), gray), name


@pytest.mark.parametrize('damage, message', [
    (lambda d: d[:len(d) // 2], 'truncated'),
    (lambda d: d[:-12], 'truncated'),
    (lambda d: d[:40] + bytes([d[40] ^ 0xFF]) + d[41:], 'CRC'),
    (lambda d: b'GIF89a' + d[6:], 'undecodable'),
    (lambda d: b'', 'undecodable'),
])
def test_check_image_rejects_damaged_files(damage, message):
    data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30), dtype=np.uint8), 'L'))
    with pytest.raises(mura_images.ImageProblem, match=message):
        mura_images.check_image(damage(data))


# --- bad input: each case gives one MuraDataError and leaves no dataset behind -------------


def _dummy_copy(tmp_path):
    manual = tmp_path / 'manual'
    shutil.copytree(DUMMY, manual)
    return manual


def _edit(path, fn):
    path.write_text(fn(path.read_text()))


def _rewrite(path, fn):
    path.write_bytes(fn(path.read_bytes()))


def _csv(manual, name):
    return manual / 'MURA-v1.1' / name


ELBOW1 = 'train/XR_ELBOW/patient00001/study1_positive'
BAD_TREES = {
    'missing image': (lambda m: (m / 'MURA-v1.1' / ELBOW1 / 'image2.png').unlink(),
                      f'missing.*1:.*{ELBOW1}/image2.png'),
    'undecodable images': (
        lambda m: [(m / 'MURA-v1.1' / ELBOW1 / 'image1.png').write_bytes(b'not a png'),
                   (m / 'MURA-v1.1' / ELBOW1 / 'image2.png').write_bytes(
                       (m / 'MURA-v1.1' / ELBOW1 / 'image2.png').read_bytes()[:50])],
        'Undecodable images .* 2: .*image1.png .*image2.png .*truncated'),
    # 8-bit gray PNGs are checked while they are written: the build still fails with every one named.
    'gray PNGs damaged after their header': (
        lambda m: [_rewrite(m / 'MURA-v1.1' / ELBOW1 / 'image1.png', lambda d: d[:-12]),
                   _rewrite(m / 'MURA-v1.1' / ELBOW1 / 'image2.png', lambda d: d[:60] + bytes([d[60] ^ 1]) + d[61:])],
        'Undecodable images .* 2: .*image1.png .*truncated.*image2.png .*CRC'),
    'header row': (lambda m: _edit(_csv(m, 'train_image_paths.csv'), lambda t: 'path\n' + t), 'header row'),
    'column count': (lambda m: _edit(_csv(m, 'valid_labeled_studies.csv'), lambda t: t.replace(',1\n', ',1,x\n', 1)),
                     '3 column'),
    'label not 0/1': (lambda m: _edit(_csv(m, 'train_labeled_studies.csv'), lambda t: t.replace(',0\n', ',2\n', 1)),
                      "label '2' is not 0 or 1"),
    'path escapes': (lambda m: _edit(_csv(m, 'train_image_paths.csv'),
                                     lambda t: t.replace('MURA-v1.1/train/XR_HAND', 'MURA-v1.1/../XR_HAND', 1)),
                     'escapes'),
    'absolute path': (lambda m: _edit(_csv(m, 'valid_image_paths.csv'), lambda t: t + '/etc/passwd\n'), 'escapes'),
    'study without images': (lambda m: _edit(_csv(m, 'valid_labeled_studies.csv'),
                                             lambda t: t + 'MURA-v1.1/valid/XR_HAND/patient00013/study1_negative/,0\n'),
                             'studies with no image.* 1: .*patient00013'),
    'CSV missing': (lambda m: _csv(m, 'valid_labeled_studies.csv').unlink(),
                    'valid_labeled_studies.csv is missing from .*the four MURA CSVs'),
    'CSV empty': (lambda m: _csv(m, 'train_labeled_studies.csv').write_text(''),
                  'train_labeled_studies.csv in .* is empty'),
    'image not a PNG': (lambda m: (m / 'MURA-v1.1' / ELBOW1 / 'image1.png').write_bytes(b'GIF89a' + bytes(64)),
                        f'Undecodable images .* 1: .*{ELBOW1}/image1.png'),
    'empty manual dir': (lambda m: shutil.rmtree(m / 'MURA-v1.1'), 'does not exist or is empty'),
    'no MURA in manual dir': (lambda m: [shutil.rmtree(m / 'MURA-v1.1'), (m / 'notes.txt').write_text('hi')],
                              r'No MURA-v1.1/ folder or MURA-v1.1.zip .*notes.txt.*aimi.stanford.edu'),
}


@pytest.mark.parametrize('case', sorted(BAD_TREES))
def test_bad_input_gives_one_error_and_no_dataset(case, tmp_path):
    manual = _dummy_copy(tmp_path)
    damage, pattern = BAD_TREES[case]
    damage(manual)
    with pytest.raises(tfds_mura.MuraDataError, match=pattern):
        _build(manual, tmp_path / 'data', config='all')
    assert not (tmp_path / 'data' / 'mura').exists()
    assert not (tmp_path / 'data' / 'downloads').exists()


def test_missing_manual_dir_shows_instructions(tmp_path):
    with pytest.raises(tfds_mura.MuraDataError, match='does not exist or is empty.*aimi.stanford.edu'):
        _build(tmp_path / 'nowhere', tmp_path / 'data', config='hand')
    assert not (tmp_path / 'data' / 'mura').exists()


@pytest.mark.parametrize('case', ['corrupt zip', 'damaged entry', 'escaping entry', 'absolute entry'])
def test_bad_zip_gives_one_error_and_no_dataset(case, tmp_path):
    manual = tmp_path / 'manual'
    manual.mkdir()
    zip_path = manual / 'MURA-v1.1.zip'
    if case == 'corrupt zip':
        _zip_tree(DUMMY, str(zip_path))
        zip_path.write_bytes(zip_path.read_bytes()[:-200])  # cut off the central directory
        pattern = 'not a readable zip'
    elif case == 'damaged entry':
        _zip_tree(DUMMY, str(zip_path))
        member = f'MURA-v1.1/{ELBOW1}/image1.png'
        with zipfile.ZipFile(zip_path) as zf:
            info = zf.getinfo(member)
        data = bytearray(zip_path.read_bytes())
        data[info.header_offset + 30 + len(member) + 20] ^= 0xFF  # a byte inside the stored PNG
        zip_path.write_bytes(bytes(data))
        pattern = f'Undecodable images .* 1: .*{ELBOW1}/image1.png .*CRC'
    else:
        name = '../evil.png' if case == 'escaping entry' else '/tmp/evil.png'
        _zip_tree(DUMMY, str(zip_path), extra={name: b'x'})
        pattern = 'escape its folder.*evil.png'
    with pytest.raises(tfds_mura.MuraDataError, match=pattern):
        _build(manual, tmp_path / 'data', config='elbow')
    assert not (tmp_path / 'data' / 'mura').exists()


def test_zip_with_macos_folder_is_accepted(tmp_path):
    manual = tmp_path / 'manual'
    manual.mkdir()
    _zip_tree(DUMMY, str(manual / 'MURA-v1.1.zip'), extra={'__MACOSX/MURA-v1.1/._train_image_paths.csv': b'junk'})
    builder = _build(manual, tmp_path / 'data', config='elbow')
    assert builder.info.splits['train'].num_examples == 6


# --- the build CLI -------------------------------------------------------------------------


def test_build_run_builds_once_then_reuses(tmp_path, capsys):
    assert build.run(DUMMY, str(tmp_path), ['hand'], overwrite=False) == 0
    first = capsys.readouterr().out
    assert 'mura/hand at' in first and 'built in' in first and 'train_1pct' in first
    assert build.run(DUMMY, str(tmp_path), ['hand'], overwrite=False) == 0
    assert 'reused existing data' in capsys.readouterr().out
    assert build.run(DUMMY, str(tmp_path), ['knee'], overwrite=False) == 1
    assert capsys.readouterr().err.startswith("error: Unknown config 'knee'")


def test_build_cli_bad_input_prints_one_error_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-m', 'tfds_mura.build', f'--manual_dir={tmp_path / "none"}',
                           f'--data_dir={tmp_path / "data"}', '--config=elbow'],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'aimi.stanford.edu' in errors[0]
    assert not (tmp_path / 'data' / 'mura').exists()


def test_enough_shards_for_file_sharding_on_common_host_counts():
    shards = mura_dataset_builder.number_of_shards
    small = 10_000  # bytes: TFDS alone would write one shard
    assert [shards(small, n) for n in (1, 38, 63, 64, 127, 128, 1023, 1024, 40_000)] == [
        1, 1, 1, 2, 2, 4, 16, 32, 32]
    # Large splits keep TFDS's size-based count when it is higher.
    assert shards(200 * 2**30, 40_000) == 1024
    # Cut into equal example counts (+-1).
    records = [_Record(f'k{i}') for i in range(1000)]
    cut = mura_dataset_builder.shard_records('train', records, {r.key: 100 for r in records})
    assert len(cut) == 16 and {len(shard) for shard in cut} <= {62, 63}
    assert sorted(r.key for shard in cut for r in shard) == sorted(r.key for r in records)
