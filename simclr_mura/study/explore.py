"""Data exploration of the built `mura` TFDS dataset: `python -m simclr_mura.study.explore --data_dir D --out R`.

Writes to `R`: `explore.md` (images and studies per body part x split x label, with the imbalance
ratio abnormal/normal), `explore_counts.csv`, and figures in `R/figures/`: counts per part, views
per study, image sizes, and a grid of sample normal and abnormal images per part. The section joins
`R/index.html` (see `html_page`), next to the results of `simclr_mura.study.report` when that was run
into the same folder, in either order.

The dataset is read without decoding images (sizes come from the PNG headers), so this is cheap
even on the full MURA; only the sample images are decoded.
"""
if __name__ == '__main__':  # As a command: TensorFlow's start-up notices filtered (tf_env.py).
    from simclr_mura import tf_env
    tf_env.import_tensorflow()

import os
import struct
import sys
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app
from absl import flags

import tfds_mura  # noqa: F401  (registers the builder)
from simclr_mura import io_util
from simclr_mura.study import figures
from simclr_mura.study import html_page
from tfds_mura.mura import mura_images

SAMPLES_PER_LABEL = 4


def png_size(data: bytes):
    """(width, height) from a PNG's IHDR chunk."""
    if not data.startswith(mura_images.PNG_SIGNATURE):
        raise ValueError('not a PNG')
    return struct.unpack('>II', data[16:24])


def prepared_datasets(data_dir: str, dataset: Optional[str] = None) -> List[str]:
    """The datasets to explore: `dataset` if given; else mura/all if built, else every built
    single-part config (they hold disjoint parts, so their tables add up)."""
    if dataset:
        return [dataset]
    from tfds_mura.mura import mura_dataset_builder
    names = mura_dataset_builder.config_names()
    built = [n for n in names if tf.io.gfile.isdir(os.path.join(data_dir, 'mura', n))
             and tfds.builder(f'mura/{n}', data_dir=data_dir).is_prepared()]
    if 'all' in built:
        return ['mura/all']
    return [f'mura/{n}' for n in built]


def image_table(data_dir: str, datasets: List[str]) -> pd.DataFrame:
    """One row per image: dataset, split, body_part, label, study_id, width, height."""
    rows: Dict[str, list] = {k: [] for k in ('dataset', 'split', 'body_part', 'label', 'study_id',
                                             'image_id', 'width', 'height')}
    for dataset in datasets:
        builder = tfds.builder(dataset, data_dir=data_dir)
        parts = builder.info.features['body_part'].names
        for split in builder.info.splits:
            ds = builder.as_dataset(split=split, shuffle_files=False,
                                    decoders={'image': tfds.decode.SkipDecoding()})
            for example in ds.as_numpy_iterator():
                width, height = png_size(example['image'])
                rows['dataset'].append(dataset)
                rows['split'].append(split)
                rows['body_part'].append(parts[int(example['body_part'])])
                rows['label'].append(int(example['label']))
                rows['study_id'].append(example['study_id'].decode('utf-8'))
                rows['image_id'].append(example['image_id'].decode('utf-8'))
                rows['width'].append(int(width))
                rows['height'].append(int(height))
    return pd.DataFrame(rows)


def counts_table(images: pd.DataFrame) -> pd.DataFrame:
    """Per part x split: normal/abnormal images and studies, and the imbalance ratio (abnormal /
    normal images, as ilias-ant reports it; docs/mura.md 2.3)."""
    out = []
    for (part, split), group in images.groupby(['body_part', 'split'], sort=True):
        studies = group.drop_duplicates('study_id')
        normal, abnormal = int((group['label'] == 0).sum()), int((group['label'] == 1).sum())
        out.append({'part': part, 'split': split, 'normal images': normal,
                    'abnormal images': abnormal, 'images': normal + abnormal,
                    'normal studies': int((studies['label'] == 0).sum()),
                    'abnormal studies': int((studies['label'] == 1).sum()),
                    'imbalance (abnormal/normal)': abnormal / normal if normal else float('nan')})
    return pd.DataFrame(out)


def _sample_images(data_dir: str, dataset: str, part: str, split: str = 'train') -> list:
    """Up to SAMPLES_PER_LABEL normal then abnormal (heading, image, label) of `part`."""
    builder = tfds.builder(dataset, data_dir=data_dir)
    part_index = builder.info.features['body_part'].names.index(part)
    found = {0: [], 1: []}
    for example in builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator():
        label = int(example['label'])
        if int(example['body_part']) != part_index or len(found[label]) >= SAMPLES_PER_LABEL:
            continue
        if any(s[0] == example['study_id'] for s in found[label]):
            continue  # One view per study: more variety.
        found[label].append((example['study_id'], example['image'], label))
        if all(len(v) >= SAMPLES_PER_LABEL for v in found.values()):
            break
    return found[0] + found[1]


def _markdown(table: pd.DataFrame) -> str:
    columns = list(table.columns)
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '|'.join('---' for _ in columns) + '|']
    for row in table.itertuples(index=False):
        lines.append('| ' + ' | '.join(f'{v:.3f}' if isinstance(v, float) else str(v) for v in row) + ' |')
    return '\n'.join(lines)


def write_explore(data_dir: str, out: str, dataset: Optional[str] = None) -> pd.DataFrame:
    """Writes the exploration files to `out` and refreshes index.html; returns the counts table.

    Raises:
      FileNotFoundError: no built mura dataset in `data_dir`.
    """
    datasets = prepared_datasets(data_dir, dataset)
    if not datasets or not all(tfds.builder(d, data_dir=data_dir).is_prepared() for d in datasets):
        raise FileNotFoundError(f'no built mura dataset in {data_dir}; build one first '
                                '(python -m tfds_mura.build --manual_dir DIR --data_dir D)')
    images = image_table(data_dir, datasets)
    counts = counts_table(images)
    figure_dir = os.path.join(out, 'figures')
    tf.io.gfile.makedirs(figure_dir)
    io_util.write_text_atomic(os.path.join(out, 'explore_counts.csv'), counts.to_csv(index=False))
    written = []
    train = counts[counts['split'] == 'train'].set_index('part')
    if len(train):
        written.append(html_page.Figure('Training images per part and label', figures.bar_counts(
            train[['normal images', 'abnormal images']],
            'Training images per body part (train split)', os.path.join(figure_dir, 'explore_counts.png'))))
    studies = images.drop_duplicates(['split', 'study_id'])
    views = images.groupby(['split', 'study_id']).size().rename('views').reset_index()
    views = views.merge(studies[['split', 'study_id', 'body_part']], on=['split', 'study_id'])
    top = int(views['views'].max())
    written.append(html_page.Figure('Views per study', figures.histograms(
        {p: g['views'].tolist() for p, g in views.groupby('body_part')}, 'Views (images) per study, '
        'all splits', 'views per study', os.path.join(figure_dir, 'explore_views.png'),
        bins=np.arange(0.5, top + 1.5, 1.0))))
    written.append(html_page.Figure('Image sizes', figures.scatter_sizes(
        {p: (g['width'].tolist(), g['height'].tolist()) for p, g in images.groupby('body_part')},
        'Image sizes (width x height, px)', os.path.join(figure_dir, 'explore_sizes.png'))))
    for dataset_name in datasets:
        for part in sorted(images.loc[images['dataset'] == dataset_name, 'body_part'].unique()):
            samples = _sample_images(data_dir, dataset_name, part)
            examples = [(' '.join(sid.decode('utf-8').split('/')[-2:]), image, label, None)
                        for sid, image, label in samples]
            written.append(html_page.Figure(f'Sample images, {part}', figures.gallery(
                examples, f'Sample training images, {part}: normal (first row), abnormal (second row)',
                os.path.join(figure_dir, f'explore_samples_{part}.png'))))
    markdown = (f'# Data exploration\n\nDataset(s): {", ".join(datasets)} in {data_dir}.\n\n'
                f'{_markdown(counts)}\n\nFigures: ' +
                ', '.join(os.path.relpath(f.path, out) for f in written) + '\n')
    io_util.write_text_atomic(os.path.join(out, 'explore.md'), markdown)
    rows = [list(counts.columns)] + [[f'{v:.3f}' if isinstance(v, float) else str(v) for v in row]
                                     for row in counts.itertuples(index=False)]
    body = ['<section id="explore"><h2>Data exploration</h2>',
            f'<p class="note">{", ".join(datasets)}: {len(images)} images, '
            f'{len(studies)} studies. Imbalance = abnormal / normal images.</p>',
            html_page.table_html(rows)] + [html_page.figure_html(f, out) for f in written]
    html_page.write_section(out, 'explore', '\n'.join(body + ['</section>']))
    html_page.write_index(out)
    return counts


FLAGS = flags.FLAGS


def main(argv):
    del argv
    try:
        counts = write_explore(FLAGS.data_dir, FLAGS.out, FLAGS.dataset)
    except FileNotFoundError as e:
        print(f'explore: error: {e}', file=sys.stderr)
        return 1
    print(_markdown(counts))
    print(f'\nwrote {os.path.join(FLAGS.out, "explore.md")}, figures/ and '
          f'{os.path.join(FLAGS.out, "index.html")}')
    return 0


if __name__ == '__main__':
    flags.DEFINE_string('data_dir', None, 'TFDS data_dir holding the built mura dataset.')
    flags.DEFINE_string('out', None, 'Report folder to write into.')
    flags.DEFINE_string('dataset', None, 'e.g. mura/elbow (default: mura/all if built, else every '
                        'built part).')
    flags.mark_flags_as_required(['data_dir', 'out'])
    app.run(main)
