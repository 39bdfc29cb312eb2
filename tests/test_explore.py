"""Tests for simclr_mura.study.explore on the tiny synthetic mura/elbow dataset."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import tiny_mura
from simclr_mura import data as data_lib
from simclr_mura.study import explore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def explored(tmp_path_factory):
    data_dir = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    out = tmp_path_factory.mktemp('explore')
    counts = explore.write_explore(data_dir, str(out))
    return dict(data_dir=data_dir, out=out, counts=counts)


def test_counts_per_part_split_and_label_match_the_dataset(explored):
    builder = tfds.builder(tiny_mura.DATASET, data_dir=explored['data_dir'])
    counts = explored['counts']
    assert sorted(counts['split']) == sorted(builder.info.splits)
    for split in builder.info.splits:
        index = data_lib.split_index(builder, split)
        row = counts[(counts['part'] == 'elbow') & (counts['split'] == split)].iloc[0]
        assert row['images'] == builder.info.splits[split].num_examples
        assert row['normal images'] == (index['label'] == 0).sum()
        assert row['abnormal images'] == (index['label'] == 1).sum()
        studies = index.drop_duplicates('study_id')
        assert row['normal studies'] + row['abnormal studies'] == len(studies)
        assert row['imbalance (abnormal/normal)'] == pytest.approx(
            row['abnormal images'] / row['normal images'])
    assert pd.read_csv(explored['out'] / 'explore_counts.csv').shape == counts.shape


def test_image_sizes_come_from_the_png_headers(explored):
    builder = tfds.builder(tiny_mura.DATASET, data_dir=explored['data_dir'])
    ds = builder.as_dataset(split='test', decoders={'image': tfds.decode.SkipDecoding()})
    for example in ds.take(3):
        width, height = explore.png_size(example['image'].numpy())
        assert tf.io.decode_png(example['image']).shape[:2] == (height, width)
    with pytest.raises(ValueError, match='not a PNG'):
        explore.png_size(b'GIF89a' + bytes(30))


def test_files_and_page_are_written(explored):
    out = explored['out']
    for name in ('explore_counts.png', 'explore_views.png', 'explore_sizes.png', 'explore_samples_elbow.png'):
        assert (out / 'figures' / name).read_bytes()[:4] == b'\x89PNG', name
    markdown = (out / 'explore.md').read_text()
    assert '| elbow | train |' in markdown and 'figures/explore_samples_elbow.png' in markdown
    page = (out / 'index.html').read_text()
    assert 'id="explore"' in page and 'figures/explore_views.png' in page
    table = explore.image_table(explored['data_dir'], [tiny_mura.DATASET])
    views = table.groupby('study_id').size()
    assert views.sum() == len(table) and np.all(views >= 1)


def test_missing_dataset_is_one_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'simclr_mura.study.explore', f'--data_dir={tmp_path}/none',
                           f'--out={tmp_path}/out'], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith('explore: error')]
    assert len(errors) == 1 and 'no built mura dataset' in errors[0]
    assert not (tmp_path / 'out').exists()
