"""Positive pairs from the views of one study (`--positive_pairs=study_views`, MICLe).

Azizi et al. 2021 ("Big Self-Supervised Models Advance Medical Image Classification", Multi-Instance
Contrastive Learning) take two different images of one patient case as a positive pair, each
augmented as usual, so that what the two views share is the case (anatomy, the abnormality), not one
image's pixels. A MURA study holds 1-5 views of one body part of one patient.

The pairs of one input pipeline:

* Its studies: all images of the split are read once (encoded, kept in memory: about the split's
  size on disk) and grouped by study; with several input pipelines, study k (in sorted study_id
  order) goes to pipeline k mod n, so no study is split between pipelines.
* An epoch of pairs visits every study of the pipeline once, in an order drawn from
  (seed, epoch): a study of several views gives two different views (both drawn), a one-view study
  gives its image twice (two augmentations of it, the original's pair). The last partial
  `pipeline_batch` of every epoch is dropped, so a batch (of one pipeline, and so of all) never
  holds two pairs of one study: the other pair's views would be negatives that show the same case.
* Without a seed the order is drawn from fresh entropy once per run.

An epoch of pairs has one pair per study, fewer than the split's images; `--train_epochs` and
`--warmup_epochs` still count in images (steps = epochs x images / batch), so a schedule means the
same number of steps with either kind of pair.
"""
import dataclasses
from typing import List, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# The numpy stream of the pair plan, apart from other uses of --seed.
PAIR_PLAN_STREAM = 0x5eed_5
FEATURES = ('label', 'body_part', 'image_id')


@dataclasses.dataclass(frozen=True)
class StudyTable:
    """One pipeline's images grouped by study: the images of study s are rows
    starts[s] .. starts[s] + sizes[s] - 1."""
    images: List[bytes]  # encoded PNGs
    labels: np.ndarray  # int64 per image
    body_parts: np.ndarray  # int64 per image
    image_ids: List[bytes]
    study_ids: List[bytes]  # one per study
    sizes: np.ndarray  # int64 per study

    @property
    def starts(self) -> np.ndarray:
        return study_starts(self.sizes)


def study_starts(sizes: np.ndarray) -> np.ndarray:
    """The first row of each study in a table whose studies have `sizes` rows, in order."""
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def read_studies(builder: tfds.core.DatasetBuilder, split: str, pipeline_id: int = 0,
                 pipelines: int = 1) -> StudyTable:
    """The images of `split` whose study falls to input pipeline `pipeline_id` of `pipelines`."""
    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={'image': tfds.decode.SkipDecoding()})
    by_study = {}
    for example in dataset.as_numpy_iterator():
        by_study.setdefault(example['study_id'], []).append(example)
    study_ids = sorted(by_study)[pipeline_id::pipelines]
    rows = [e for s in study_ids for e in sorted(by_study[s], key=lambda e: e['image_id'])]
    return StudyTable(
        images=[e['image'] for e in rows],
        labels=np.array([e['label'] for e in rows], np.int64),
        body_parts=np.array([e['body_part'] for e in rows], np.int64),
        image_ids=[e['image_id'] for e in rows], study_ids=study_ids,
        sizes=np.array([len(by_study[s]) for s in study_ids], np.int64))


def plan_epoch(sizes: np.ndarray, seed: int, epoch: int, pipeline_batch: int) -> np.ndarray:
    """[pairs, 2] rows of the study table (module docstring): each study once, as two different
    views when it has several; the epoch's last partial `pipeline_batch` is dropped."""
    sizes = np.asarray(sizes, np.int64)
    starts = study_starts(sizes)
    rng = np.random.default_rng([PAIR_PLAN_STREAM, seed, epoch])
    order = rng.permutation(len(sizes))
    size = sizes[order]
    first = rng.integers(0, size)
    # Another view: an offset of 1 .. size - 1 from the first (0 for a one-view study).
    second = (first + 1 + rng.integers(0, np.maximum(size - 1, 1))) % size
    second = np.where(size > 1, second, first)
    pairs = np.stack([starts[order] + first, starts[order] + second], axis=1)
    return pairs[:len(pairs) - len(pairs) % pipeline_batch]


def pairs_dataset(table: StudyTable, seed: Optional[int], pipeline_batch: int) -> tf.data.Dataset:
    """Endless dataset of pairs, epoch after epoch: dicts with `image` and `partner` (encoded PNGs
    of one study) and the first image's `label`, `body_part` and `image_id`.

    Raises:
      ValueError: fewer studies than `pipeline_batch` (an epoch would hold no full batch).
    """
    if len(table.sizes) < pipeline_batch:
        raise ValueError(f'--positive_pairs=study_views: this input pipeline has {len(table.sizes)} '
                         f'studies, fewer than its batch of {pipeline_batch} pairs (one pair per '
                         'study per batch); use a smaller --train_batch_size or --positive_pairs=augment')
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))
    sizes = table.sizes

    def plan(epoch):
        return plan_epoch(sizes, seed, int(epoch), pipeline_batch)

    images = tf.constant(table.images)
    labels, parts = tf.constant(table.labels), tf.constant(table.body_parts)
    image_ids = tf.constant(table.image_ids)

    def epoch_pairs(epoch):
        rows = tf.numpy_function(plan, [epoch], tf.int64, stateful=False)
        return tf.data.Dataset.from_tensor_slices(tf.reshape(rows, [-1, 2]))

    def element(rows):
        first, second = rows[0], rows[1]
        return {'image': images[first], 'partner': images[second], 'label': labels[first],
                'body_part': parts[first], 'image_id': image_ids[first]}

    return (tf.data.Dataset.counter(dtype=tf.int64).flat_map(epoch_pairs)
            .map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
