"""TFDS `mura` splits -> per-replica tf.data pipelines (behaviour of google-research/simclr `tf2/data.py`).

Each input pipeline (`strategy.distribute_datasets_from_function`) reads its share of the split
(see below), then, as the original:
cache (optional) -> [training: non-deterministic order (ordered when seeded), slack,
shuffle(per-replica batch x 10, x 50 at image_size <= 32), repeat] -> map(AUTOTUNE)
-> [evaluation: padding to full batches] -> batch(per-replica batch, drop_remainder=True: static
shapes for TPUs) -> prefetch(AUTOTUNE).

Elements are `(images, targets)`:
* images: two augmented views concatenated on channels for pretraining, one view otherwise;
  a view of a grey (1-channel) radiograph keeps its one channel: (B, H, W, 2) for pretraining,
  (B, H, W, 1) otherwise; RGB input gives (B, H, W, 6) and (B, H, W, 3). `model.Model` tiles grey
  views to RGB on the device, after the blur, which gives the views of the original's
  tile-then-augment order (`data_util` docstring: grey path) with a third of the data to write,
  batch and copy. The DenseNet baseline passes its own one-view preprocessing (`preprocess_fn`:
  resize, flip and rotation, see `densenet.py`), which returns (B, H, W, 3).
* targets: dict with 'label' (B, 2) one-hot float32, 'weight' (B,) float32 (per-example class
  weight, 1 without class weighting) and 'key' (B,) int64: a fingerprint of `image_id`. Keys are
  integers (not strings) so they can pass through any strategy, TPUs included; `split_index` maps
  them back to image_id, study_id and body_part on the host.

Several input pipelines (one per worker of MultiWorkerMirroredStrategy, one per host of a TPU pod
slice) each read a disjoint part of the split (`pipeline_split`), so every example is read by
exactly one pipeline per epoch: by files (TFDS `ReadConfig(input_context=...)`) when training on a
split with at least as many files as pipelines, as the original; otherwise, and always for
evaluation, by examples (the TFDS subsplit `tfds.even_splits(split, pipelines)[pipeline id]`, whose
sizes are known up front). The log says which. One pipeline reads the whole split, as the original.

Evaluation (no shuffle, no repeat) completes each pipeline's part with padding examples (key
`PADDING_KEY`, weight 0) up to the same number of full batches on every pipeline, so every
replica gets a full, fixed-shape batch and every worker runs the same number of eval steps;
evaluation drops the padding rows.

Data position on resume: tf.data distributed iterators are not checkpointable in TF 2.21
(`tf.train.Checkpoint(iterator=...)` rejects them), so the position is restored by skip-ahead:
with `deterministic=True` (a seeded, ordered stream; `train` asks for it whenever --seed is set) a
resumed run skips the examples the finished steps consumed and continues the same example order
with the same augmentations: each element's augmentation seed is derived from its position in the
pipeline's stream, (seed, position x pipelines + pipeline id), so the parallel map is a pure
function and a resumed stream equals the uninterrupted one bit for bit. Without it the stream is reshuffled on restart, exactly like
starting a new shuffled pass.
"""
import dataclasses
import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from simclr_mura import data_util
from simclr_mura import study_pairs
from simclr_mura.config import ConfigError

NUM_CLASSES = 2
GET_MURA_HELP = (
    'Get MURA-v1.1 (free registration) from https://aimi.stanford.edu/datasets/mura-msk-xrays and build '
    'it with `python -m tfds_mura.build --manual_dir=DIR_WITH_MURA --data_dir=DATA_DIR` (or pass '
    '--tfds_manual_dir=DIR_WITH_MURA to build it on first use), or run the synthetic demo: '
    '`bash run.sh demo`.')
_KEY_BUCKETS = 2**62
ONE_CLASS_WEIGHT = 0.5  # Both classes of a body part whose training images are all of one class.
PADDING_KEY = -1  # Key of the padding examples that complete the last eval batch (never a real key).
_INTERLEAVE_CYCLE_LENGTH = 32  # ReadConfig of the original.


# fn(decoded image, is_training=bool) -> float32 (size, size, 3) image in [0, 1].
PreprocessFn = Callable[..., tf.Tensor]


class DatasetNotBuiltError(ConfigError):
    """The requested `mura` config is unknown, or not built and cannot be built here."""


def make_builder(dataset: str, data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `dataset` (e.g. 'mura/elbow'), prepared or not."""
    import tfds_mura  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (registers 'mura')
    try:
        return tfds.builder(dataset, data_dir=data_dir)
    except Exception as e:  # TFDS raises several types for unknown names and configs.
        raise DatasetNotBuiltError(f'--dataset={dataset}: {str(e).splitlines()[0]}') from e


def not_built_message(dataset: str, data_dir: Optional[str]) -> str:
    """One line saying that `dataset` is not built and how to get it."""
    where = data_dir or 'the default TFDS data dir (TFDS_DATA_DIR or ~/tensorflow_datasets)'
    return f'The TFDS dataset {dataset} is not built in {where}. {GET_MURA_HELP}'


def ensure_prepared(builder: tfds.core.DatasetBuilder, manual_dir: Optional[str] = None) -> None:
    """Builds the dataset from `manual_dir` if it is not built (as the original's
    `download_and_prepare()` call); without a manual dir a missing dataset is a DatasetNotBuiltError."""
    if builder.is_prepared():
        return
    dataset = f'{builder.name}/{builder.builder_config.name}'
    if not manual_dir:
        raise DatasetNotBuiltError(not_built_message(dataset, builder.data_dir_root))
    logging.info('Building %s from %s into %s.', dataset, manual_dir, builder.data_dir_root)
    from tfds_mura import MuraDataError  # pylint: disable=import-outside-toplevel
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except MuraDataError as e:  # Bad MURA input: one line, like every other bad setting.
        raise DatasetNotBuiltError(f'--tfds_manual_dir={manual_dir}: ' + ' '.join(str(e).split())) from e


def image_key(image_id: tf.Tensor) -> tf.Tensor:
    """int64 fingerprint of `image_id` strings (how eval predictions are matched to their ids)."""
    return tf.strings.to_hash_bucket_fast(image_id, _KEY_BUCKETS)


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """Examples in `split` (slices allowed), from the builder's metadata."""
    return int(builder.info.splits[split].num_examples)


def _skip_image_decoding():
    return {'image': tfds.decode.SkipDecoding()}


def split_index(builder: tfds.core.DatasetBuilder, split: str) -> pd.DataFrame:
    """One row per image of `split`: key, image_id, study_id, body_part (name), label (0/1).

    Images are not decoded, so this pass is cheap. Raises ValueError if two image ids share a key.
    """
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=_skip_image_decoding())
    ds = ds.map(lambda x: {'key': image_key(x['image_id']), 'image_id': x['image_id'],
                           'study_id': x['study_id'], 'body_part': x['body_part'],
                           'label': x['label']}).batch(4096)
    columns = {name: [] for name in ('key', 'image_id', 'study_id', 'body_part', 'label')}
    for batch in ds.as_numpy_iterator():
        for name in columns:
            columns[name].append(batch[name])
    table = pd.DataFrame({k: np.concatenate(v) if v else np.array([]) for k, v in columns.items()})
    for name in ('image_id', 'study_id'):
        table[name] = table[name].map(lambda b: b.decode('utf-8'))
    part_names = builder.info.features['body_part'].names
    table['body_part'] = [part_names[i] for i in table['body_part'].astype(int)]
    table['label'] = table['label'].astype(int)
    if table['key'].duplicated().any():
        raise ValueError(f'two image ids of split {split!r} have the same fingerprint; '
                         'predictions could not be matched to images')
    return table


def count_images(table: pd.DataFrame, part_names: Sequence[str]) -> np.ndarray:
    """Image counts per body part and label of a split table (see `split_index`).

    Returns:
      int64 array (len(part_names), 2): [part, label] -> number of images (label 0 normal, 1 abnormal).
    """
    counts = np.zeros((len(part_names), NUM_CLASSES), np.int64)
    for part_id, part in enumerate(part_names):
        labels = table.loc[table['body_part'] == part, 'label'].to_numpy()
        counts[part_id] = [len(labels) - int(labels.sum()), int(labels.sum())]
    return counts


def class_weights_from_counts(counts: np.ndarray) -> np.ndarray:
    """The MURA paper's loss weights from image counts ([part, label] as `count_images`).

    For body part T with |N_T| normal and |A_T| abnormal images the abnormal class gets
    w1 = |N_T| / (|N_T| + |A_T|) and the normal class w0 = |A_T| / (|N_T| + |A_T|), so the rarer class
    weighs more (the seed project had them the other way round). Parts without images get 1, 1.
    A part with images of one class only (possible in tiny label fractions; never in the paper's
    training set) would give its images weight 0 and so drop it from the loss; it gets 0.5, 0.5
    instead, the weights of a balanced part.

    Returns:
      float32 array of the shape of `counts`: [part, label] -> weight.
    """
    counts = np.asarray(counts, np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    # Column 0 (normal) gets the abnormal fraction and column 1 (abnormal) the normal one.
    weights = counts[:, ::-1] / np.maximum(totals, 1)
    one_class = (counts == 0).any(axis=1, keepdims=True)
    weights = np.where(one_class, ONE_CLASS_WEIGHT, weights)
    return np.where(totals > 0, weights, 1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ClassWeights:
    """The class weights of a run with the image counts they come from."""
    split: str
    part_names: Tuple[str, ...]
    counts: np.ndarray   # (parts, 2) images: [part, label]
    weights: np.ndarray  # (parts, 2) float32: [part, label] -> loss weight

    def as_dict(self) -> Dict[str, Dict[str, float]]:
        """Per body part with images: the counts and weights, for result.json."""
        return {part: {'normal_images': int(self.counts[i, 0]), 'abnormal_images': int(self.counts[i, 1]),
                       'w_normal': float(self.weights[i, 0]), 'w_abnormal': float(self.weights[i, 1])}
                for i, part in enumerate(self.part_names) if self.counts[i].sum()}

    def describe(self) -> List[str]:
        """One line per body part with images, e.g. for the start-up log."""
        return [f'{part}: {v["normal_images"]} normal / {v["abnormal_images"]} abnormal images of '
                f'{self.split} -> w_normal {v["w_normal"]:.4f}, w_abnormal {v["w_abnormal"]:.4f}'
                for part, v in self.as_dict().items()]


def mura_class_weight_table(builder: tfds.core.DatasetBuilder, split: str) -> ClassWeights:
    """The MURA paper's loss weights per body part from the image counts of `split` (with the counts).

    Parts whose images in `split` are all of one class are logged (see `class_weights_from_counts`).
    """
    names = tuple(builder.info.features['body_part'].names)
    counts = count_images(split_index(builder, split), names)
    for part, (normal, abnormal) in zip(names, counts):
        if (normal == 0) != (abnormal == 0):
            logging.warning('Split %s has only %s images of %s; the MURA weights would give them weight '
                            '0, so they get %s (as a balanced part).', split,
                            'normal' if abnormal == 0 else 'abnormal', part, ONE_CLASS_WEIGHT)
    return ClassWeights(split, names, counts, class_weights_from_counts(counts))


def _map_fn(features: Dict[str, tf.Tensor], *, image_size: int, is_training: bool, is_pretrain: bool,
            color_jitter_strength: float, class_weights: Optional[np.ndarray],
            preprocess_fn: Optional[PreprocessFn], seed: Optional[tf.Tensor] = None,
            crop_min_area: float = data_util.DEFAULT_CROP_MIN_AREA):
    """One example -> (image, targets) as described in the module docstring (SimCLR's grey views
    stay 1-channel; `preprocess_fn` gives its own channels).

    `seed` ([2] int64, training only) fixes the augmentation; None draws one (not reproducible
    under a parallel map)."""
    if preprocess_fn is not None:
        preprocess = functools.partial(preprocess_fn, is_training=is_training)
    else:
        preprocess = functools.partial(
            data_util.preprocess_view, height=image_size, width=image_size, is_training=is_training,
            color_jitter_strength=color_jitter_strength if is_pretrain else 0.,
            test_crop=image_size > 32, crop_min_area=crop_min_area)
    image = features['image']
    view_seeds = [None, None]
    if is_training and seed is not None:
        view_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if is_training and is_pretrain:
        image = data_util.preprocess_views(image, image_size, image_size, color_jitter_strength,
                                           view_seeds, crop_min_area=crop_min_area)
    elif is_training:
        image = preprocess(image, seed=view_seeds[0])
    else:
        image = preprocess(image)
    return image, _targets(features, class_weights)


def _targets(features: Dict[str, tf.Tensor], class_weights: Optional[np.ndarray]) -> Dict[str, tf.Tensor]:
    """The one-hot label, the per-example loss weight and the image key of one example."""
    label = tf.cast(features['label'], tf.int32)
    targets = {'label': tf.one_hot(label, NUM_CLASSES)}
    if class_weights is not None:
        targets['weight'] = tf.gather_nd(tf.constant(class_weights),
                                         tf.stack([tf.cast(features['body_part'], tf.int32), label]))
    else:
        targets['weight'] = tf.constant(1.0)
    targets['key'] = image_key(features['image_id'])
    return targets


def _study_pair_map_fn(pair: Dict[str, tf.Tensor], *, decode, image_size: int,
                       color_jitter_strength: float, class_weights: Optional[np.ndarray],
                       seed: Optional[tf.Tensor] = None,
                       crop_min_area: float = data_util.DEFAULT_CROP_MIN_AREA):
    """A pair of `study_pairs.pairs_dataset` -> (its two views on channels, targets of `image`)."""
    view_seeds = [None, None]
    if seed is not None:
        view_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    views = data_util.preprocess_image_views(
        [decode(pair['image']), decode(pair['partner'])], image_size, image_size,
        color_jitter_strength, view_seeds, crop_min_area=crop_min_area)
    return views, _targets(pair, class_weights)


def _pad_to_full_batches(dataset: tf.data.Dataset, count: int, largest: int,
                         pipeline_batch: int) -> tf.data.Dataset:
    """Appends padding examples (key PADDING_KEY, weight 0) to the `count` examples of `dataset` up
    to the smallest multiple of `pipeline_batch` that holds `largest` (the largest pipeline's part).

    A padding image is zeros of the shape of `dataset`'s images, so its channels match theirs
    (1 for grey views, 3 for RGB ones).

    Without it the last eval step can hand a replica an empty batch, which the CPU kernels reject,
    and the changing batch shape would retrace the eval step (and cannot run on a TPU at all).
    Evaluation drops the padding rows, so results equal the original's partial last batch.
    """
    pad = largest + (-largest % pipeline_batch) - count
    if not pad:
        return dataset
    image_spec = dataset.element_spec[0]
    element = (tf.zeros(image_spec.shape, image_spec.dtype),
               {'label': tf.one_hot(0, NUM_CLASSES), 'weight': tf.constant(0.0),
                'key': tf.constant(PADDING_KEY, tf.int64)})
    return dataset.concatenate(tf.data.Dataset.from_tensors(element).repeat(pad))


FILE_SHARDING = 'files'
EXAMPLE_SHARDING = 'examples'


def pipeline_split(builder: tfds.core.DatasetBuilder, split: str,
                   input_context: tf.distribute.InputContext, *, by_files_if_possible: bool):
    """What one input pipeline reads of `split`: (split to read, sharding, examples it holds).

    One pipeline: (split, None, all examples). Several: with `by_files_if_possible` and at least as
    many files as pipelines, (split, FILE_SHARDING, None): TFDS gives each pipeline whole files
    (pass `input_context` in the ReadConfig); otherwise (the TFDS subsplit of this pipeline,
    EXAMPLE_SHARDING, its examples), contiguous near-equal parts (sizes differ by at most one).
    """
    pipelines = input_context.num_input_pipelines
    if pipelines == 1:
        return split, None, num_examples(builder, split)
    files = len(builder.info.splits[split].file_instructions)
    if by_files_if_possible and files >= pipelines:
        return split, FILE_SHARDING, None
    part = tfds.even_splits(split, pipelines)[input_context.input_pipeline_id]
    return part, EXAMPLE_SHARDING, int(builder.info.splits[part].num_examples)


def _largest_part(builder: tfds.core.DatasetBuilder, split: str, pipelines: int) -> int:
    """Examples in the largest example-sharded part of `split` over `pipelines` pipelines."""
    return -(-num_examples(builder, split) // pipelines)


def _with_position_seeds(dataset: tf.data.Dataset, seed: Optional[int],
                        input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Pairs each element with the augmentation seed (seed, position x pipelines + pipeline id).

    Positions count from the start of the (repeated) stream, before any resume skip, so a resumed
    pipeline gives its elements the seeds the uninterrupted one gave them."""
    base = tf.constant(seed or 0, tf.int64)
    pipelines = tf.constant(input_context.num_input_pipelines, tf.int64)
    pipeline_id = tf.constant(input_context.input_pipeline_id, tf.int64)
    positions = tf.data.Dataset.counter(dtype=tf.int64).map(
        lambda position: tf.stack([base, position * pipelines + pipeline_id]))
    return tf.data.Dataset.zip((dataset, positions))


def build_input_fn(builder: tfds.core.DatasetBuilder, split: str, global_batch_size: int, *,
                   is_training: bool, is_pretrain: bool, image_size: int,
                   color_jitter_strength: float = 0., cache_dataset: bool = False,
                   class_weights: Optional[np.ndarray] = None, deterministic: bool = False,
                   seed: Optional[int] = None, resume_step: int = 0,
                   preprocess_fn: Optional[PreprocessFn] = None,
                   crop_min_area: float = data_util.DEFAULT_CROP_MIN_AREA,
                   positive_pairs: str = 'augment'
                   ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """Returns `input_fn(input_context) -> tf.data.Dataset` of per-replica batches.

    Args:
      builder: a prepared `mura` TFDS builder.
      split: TFDS split expression (e.g. 'train_1pct', 'train[:50%]').
      global_batch_size: batch over all replicas; the per-replica batch is this / replicas.
      is_training: shuffle, repeat, drop the partial last batch, shard by files when the split has
        enough of them (see `pipeline_split`).
      is_pretrain: two augmented views with colour jitter (training only).
      image_size: output height and width.
      color_jitter_strength: jitter strength of the pretraining views.
      cache_dataset: cache the raw split in memory.
      class_weights: (num_body_parts, 2) per-example loss weights (`mura_class_weight_table(...).weights`).
      deterministic: ordered, seeded pipeline (for exact reruns and skip-ahead resume).
      seed: shuffle seed used when `deterministic`.
      resume_step: training steps already done; with `deterministic`, each input pipeline skips
        the examples those steps consumed (global batch x steps / pipelines).
      preprocess_fn: `fn(image, is_training=...)` turning a decoded radiograph (uint8, H x W x 1)
        into a float32 (image_size, image_size, 3) image in [0, 1], used instead of SimCLR's
        `data_util.preprocess_view` (e.g. `baseline.preprocess_fn`); one view, so only with
        `is_pretrain=False`.
      crop_min_area: smallest share of the image a SimCLR training crop keeps (the original's
        0.08); unused with `preprocess_fn`.
      positive_pairs: with `is_pretrain` and `is_training`, 'augment' (two views of one image, the
        original) or 'study_views' (two images of one study, `study_pairs`).
    """
    if preprocess_fn is not None and is_pretrain:
        raise ValueError('preprocess_fn replaces the one-view preprocessing; pretraining uses '
                         "SimCLR's two-view augmentation (pass preprocess_fn=None)")
    map_fn = functools.partial(_map_fn, image_size=image_size, is_training=is_training,
                               is_pretrain=is_pretrain, color_jitter_strength=color_jitter_strength,
                               class_weights=class_weights, preprocess_fn=preprocess_fn,
                               crop_min_area=crop_min_area)

    if positive_pairs == 'study_views' and is_training and is_pretrain:
        return functools.partial(
            _study_pairs_input, builder, split, global_batch_size, image_size=image_size,
            color_jitter_strength=color_jitter_strength, class_weights=class_weights,
            deterministic=deterministic, seed=seed, resume_step=resume_step,
            crop_min_area=crop_min_area)

    def input_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        pipelines = input_context.num_input_pipelines
        part, sharding, count = pipeline_split(builder, split, input_context,
                                               by_files_if_possible=is_training)
        logging.info('Input pipeline %d/%d for split %s: per-replica batch %d%s.',
                     input_context.input_pipeline_id, pipelines, split, batch_size,
                     {None: '', FILE_SHARDING: ', sharded by files',
                      EXAMPLE_SHARDING: f', sharded by examples ({count} of '
                                        f'{num_examples(builder, split)} examples'
                                        f'{"; fewer files than pipelines" if is_training else ""})'
                      }[sharding])
        if is_training and count == 0:
            raise ValueError(f'split {split} has {num_examples(builder, split)} examples, fewer than '
                             f'the {pipelines} input pipelines: input pipeline '
                             f'{input_context.input_pipeline_id} would have nothing to train on')
        read_config = tfds.ReadConfig(
            interleave_cycle_length=_INTERLEAVE_CYCLE_LENGTH, interleave_block_length=1,
            input_context=input_context if sharding == FILE_SHARDING else None,
            shuffle_seed=seed if deterministic else None)
        if count == 0:  # TFDS rejects empty subsplits: an empty dataset of the split's elements.
            dataset = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config).take(0)
        else:
            dataset = builder.as_dataset(split=part, shuffle_files=is_training, read_config=read_config)
        if cache_dataset:
            dataset = dataset.cache()
        if is_training:
            options = tf.data.Options()
            options.deterministic = bool(deterministic)
            options.experimental_slack = True
            dataset = dataset.with_options(options)
            buffer_multiplier = 50 if image_size <= 32 else 10
            dataset = dataset.shuffle(batch_size * buffer_multiplier,
                                      seed=seed if deterministic else None)
            dataset = dataset.repeat(-1)
            if deterministic:
                dataset = _with_position_seeds(dataset, seed, input_context)
            if deterministic and resume_step:
                # Before the map, so skipped examples are read but never decoded or augmented.
                dataset = dataset.skip(
                    resume_step * global_batch_size // input_context.num_input_pipelines)
        if is_training and deterministic:
            dataset = dataset.map(lambda features, element_seed: map_fn(features, seed=element_seed),
                                  num_parallel_calls=tf.data.AUTOTUNE)
        else:
            dataset = dataset.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
        if not is_training:
            # Every pipeline pads to the full batches of the largest part, so all run the same steps.
            dataset = _pad_to_full_batches(dataset, count, _largest_part(builder, split, pipelines),
                                           global_batch_size // pipelines)
        # Static batch shapes (TPUs need them): training drops the partial last batch, as the
        # original; evaluation was padded to full batches above, so dropping removes nothing.
        dataset = dataset.batch(batch_size, drop_remainder=True)
        return dataset.prefetch(tf.data.AUTOTUNE)

    return input_fn


def _study_pairs_input(builder: tfds.core.DatasetBuilder, split: str, global_batch_size: int,
                       input_context: tf.distribute.InputContext, *, image_size: int,
                       color_jitter_strength: float, class_weights: Optional[np.ndarray],
                       deterministic: bool, seed: Optional[int], resume_step: int,
                       crop_min_area: float) -> tf.data.Dataset:
    """`build_input_fn`'s training input with `positive_pairs='study_views'` (study_pairs.py):
    one pipeline's studies, an epoch of pairs after another, two views per pair."""
    batch_size = input_context.get_per_replica_batch_size(global_batch_size)
    pipelines = input_context.num_input_pipelines
    pipeline_batch = global_batch_size // pipelines
    table = study_pairs.read_studies(builder, split, input_context.input_pipeline_id, pipelines)
    logging.info('Input pipeline %d/%d for split %s: per-replica batch %d, study-view pairs: %d '
                 'studies (%d images, %d with one view), %d pairs per epoch.',
                 input_context.input_pipeline_id, pipelines, split, batch_size, len(table.sizes),
                 len(table.images), int(np.sum(table.sizes == 1)),
                 len(table.sizes) - len(table.sizes) % pipeline_batch)
    dataset = study_pairs.pairs_dataset(table, seed if deterministic else None, pipeline_batch)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    dataset = dataset.with_options(options)
    map_fn = functools.partial(
        _study_pair_map_fn, decode=builder.info.features['image'].decode_example,
        image_size=image_size, color_jitter_strength=color_jitter_strength,
        class_weights=class_weights, crop_min_area=crop_min_area)
    if deterministic:
        dataset = _with_position_seeds(dataset, seed, input_context)
        if resume_step:
            dataset = dataset.skip(resume_step * pipeline_batch)
        dataset = dataset.map(lambda pair, element_seed: map_fn(pair, seed=element_seed),
                              num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def build_distributed_dataset(input_fn, strategy: tf.distribute.Strategy):
    """`strategy.distribute_datasets_from_function(input_fn)`, as the original."""
    return strategy.distribute_datasets_from_function(input_fn)
