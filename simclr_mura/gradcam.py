"""Where a classifier looks: Grad-CAM maps of a finished fine-tuning or baseline run.

`python -m simclr_mura.gradcam --run RUN [--data_dir D] [--signs DIR/synthetic_signs.csv]`
restores the checkpoint RUN was evaluated at (its `result.json`) and computes, for images of its
evaluation split, the Grad-CAM map (Selvaraju et al. 2017) of the log-odds of 'abnormal': the
last feature map (ResNet block group 4; DenseNet-169's final ReLU) weighted per channel by the
spatial mean of the score's gradient, summed over channels, ReLU, scaled to a peak of 1. For the
DenseNet baseline (global average pooling, one dense layer) this is the class activation map the
MURA paper shows. Maps are at the feature map's resolution (image_size / 32: 7 x 7 at 224 px, 3 x 3
at 96 px), drawn over the model's own input view (centre crop, or the baseline's resize).

The images: the report gallery's (the run's most confident correct and wrong predictions,
`metrics.confident_examples`), unless `--images` names image ids. The maps, the input views and
the probabilities go to `RUN/class_activation_maps.npz`, which the report's gallery overlays.

With `--signs` (the synthetic generator's `synthetic_signs.csv`, which knows where each abnormal
image's sign was drawn), every abnormal image of the split is mapped as well, and
`RUN/sign_localization.json` records how often the map's peak cell holds part of the sign,
beside the rate a peak placed at random would reach (the share of the map's cells the sign
touches, averaged over the images).
"""
if __name__ == '__main__':  # As a command: TensorFlow's start-up notices filtered (tf_env.py).
    from simclr_mura import tf_env
    tf_env.import_tensorflow()

import dataclasses
import io
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
from absl import logging

from simclr_mura import data as data_lib
from simclr_mura import data_util
from simclr_mura import evaluate as evaluate_lib
from simclr_mura import io_util
from simclr_mura import metrics as metrics_lib
from simclr_mura import model as model_lib
from simclr_mura import recipes
from simclr_mura.config import Config, ConfigError
from simclr_mura.study import run_files

BATCH_SIZE = 16


def grad_cam(model, images: tf.Tensor):
    """(maps [B, h, w] in [0, 1], probabilities of abnormal [B]) of a batch of model inputs.

    `model.feature_map_outputs(images)` gives the last feature map and the logits; the score is
    the log-odds of 'abnormal' (`model.abnormal_log_odds`). Each image's score depends only on its
    own features (inference mode), so one gradient of the summed scores gives every image's.
    A map whose weighted sum is nowhere positive is all zeros.
    """
    with tf.GradientTape() as tape:
        feature_map, logits = model.feature_map_outputs(images)
        total = tf.reduce_sum(model_lib.abnormal_log_odds(tf.cast(logits, tf.float32)))
    gradients = tape.gradient(total, feature_map)
    weights = tf.reduce_mean(tf.cast(gradients, tf.float32), axis=[1, 2], keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(weights * tf.cast(feature_map, tf.float32), axis=-1))
    peak = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    maps = tf.math.divide_no_nan(maps, peak)
    return maps.numpy(), model_lib.abnormal_probability(tf.cast(logits, tf.float32)).numpy()


def peak_cell_hit(cam: np.ndarray, sign_mask: np.ndarray):
    """(whether the map's peak cell holds a pixel of the sign, the share of cells that do).

    `cam` is [h, w]; `sign_mask` [S, S] on the model's input, cut into h x w cells as the
    feature map's grid tiles it. An all-zero map has no peak: no hit."""
    h, w = cam.shape
    rows = np.array_split(np.arange(sign_mask.shape[0]), h)
    cols = np.array_split(np.arange(sign_mask.shape[1]), w)
    touched = np.array([[sign_mask[np.ix_(r, c)].any() for c in cols] for r in rows])
    if cam.max() <= 0:
        return False, float(touched.mean())
    i, j = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(touched[i, j]), float(touched.mean())


@dataclasses.dataclass
class LoadedRun:
    config: Config
    model: object
    step: int
    checkpoint: str
    preprocess_fn: object  # image (uint8 H x W x 1) -> the model's input view in [0, 1]
    predictions: Optional[pd.DataFrame]


def load_run(run_dir: str, data_dir: Optional[str] = None) -> LoadedRun:
    """The model of a finished, evaluated fine-tuning or baseline run, at its evaluated step."""
    def read_json(name):
        path = os.path.join(run_dir, name)
        if not tf.io.gfile.exists(path):
            raise ConfigError(f'{run_dir} has no {name}: class activation maps need a finished, '
                              'evaluated fine-tuning or baseline run (--mode=train_then_eval or eval)')
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    saved, result = read_json(run_files.FLAGS), read_json(run_files.RESULT)
    fields = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in saved.items() if k in fields})
    if data_dir:
        config = config.replace(data_dir=data_dir)
    if config.train_mode == 'pretrain' and not config.lineareval_while_pretraining:
        raise ConfigError(f'{run_dir} is a pretraining run without a classifier: map a fine-tuning, '
                          'linear-evaluation or baseline run')
    recipe = recipes.for_config(config)
    model = recipe.build_model(2)
    checkpoint = result.get('checkpoint')
    if not checkpoint or not tf.io.gfile.exists(checkpoint + '.index'):
        # The evaluated checkpoint was pruned: the newest one (the gallery then skips its maps).
        checkpoint = tf.train.latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ConfigError(f'{run_dir} has no checkpoint to map')
    step = evaluate_lib.restore_for_eval(model, checkpoint)
    preprocess = recipe.eval_preprocess_fn()
    if preprocess is None:
        size = config.image_size

        def preprocess(image, is_training=False):
            return data_util.preprocess_view(image, size, size, is_training=is_training,
                                             test_crop=size > 32)
    predictions_path = os.path.join(run_dir, run_files.predictions_filename(
        result.get('eval_split', config.eval_split), step))
    predictions = None
    if tf.io.gfile.exists(predictions_path):
        with tf.io.gfile.GFile(predictions_path) as f:
            predictions = pd.read_csv(f)
    return LoadedRun(config, model, step, checkpoint, preprocess, predictions)


def read_split_images(builder, split: str, image_ids: Optional[Sequence[str]] = None
                      ) -> Dict[str, tuple]:
    """image_id -> (decoded image uint8 H x W x C, label) of `split` (all images, or `image_ids`)."""
    wanted = None if image_ids is None else set(image_ids)
    found = {}
    for example in builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator():
        image_id = example['image_id'].decode('utf-8')
        if wanted is None or image_id in wanted:
            found[image_id] = (example['image'], int(example['label']))
            if wanted is not None and len(found) == len(wanted):
                break
    missing = sorted((wanted or set()) - set(found))
    if missing:
        raise ConfigError(f'{len(missing)} image id(s) are not in split {split}, e.g. {missing[0]}')
    return found


def to_grey(image: np.ndarray) -> np.ndarray:
    """uint8 H x W x 1, the input the eval preprocessing expects (the builder stores grey images;
    a 3-channel array keeps its first channel)."""
    return image if image.shape[-1] == 1 else image[..., :1]


def compute_maps(run: LoadedRun, images: Dict[str, tuple]) -> pd.DataFrame:
    """One row per image: image_id, label, probability, map ([h, w]) and view (uint8 [S, S])."""
    rows = []
    ids = sorted(images)
    for start in range(0, len(ids), BATCH_SIZE):
        batch_ids = ids[start:start + BATCH_SIZE]
        views = [run.preprocess_fn(tf.constant(to_grey(images[i][0])), is_training=False)
                 for i in batch_ids]
        inputs = tf.stack(views)
        maps, probabilities = grad_cam(run.model, inputs)
        for k, image_id in enumerate(batch_ids):
            view = np.clip(views[k].numpy()[..., 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            rows.append({'image_id': image_id, 'label': images[image_id][1],
                         'probability': float(probabilities[k]), 'map': maps[k], 'view': view})
    return pd.DataFrame(rows)


def read_signs(path: str) -> Dict[str, tuple]:
    """image_id -> (kind, (x0, y0, x1, y1)) from the synthetic generator's signs file."""
    with tf.io.gfile.GFile(path) as f:
        table = pd.read_csv(f)
    expected = ['image_id', 'kind', 'x0', 'y0', 'x1', 'y1']
    if list(table.columns) != expected:
        raise ConfigError(f'{path} is not a synthetic signs file (columns {", ".join(expected)}); '
                          'it is written beside MURA-v1.1/ by python -m tfds_mura.synthetic')
    return {row.image_id: (row.kind, (int(row.x0), int(row.y0), int(row.x1), int(row.y1)))
            for row in table.itertuples()}


def sign_view_mask(run: LoadedRun, image_shape, box) -> np.ndarray:
    """The sign's box carried through the same eval preprocessing as the image: [S, S] bool."""
    mask = np.zeros(tuple(image_shape[:2]) + (1,), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return run.preprocess_fn(tf.constant(mask), is_training=False).numpy()[..., 0] > 0.5


def localization(run: LoadedRun, maps: pd.DataFrame, images: Dict[str, tuple],
                 signs: Dict[str, tuple]) -> Dict[str, object]:
    """How often the map's peak cell holds the sign, over the abnormal images that have one."""
    per_kind: Dict[str, List[tuple]] = {}
    for row in maps.itertuples():
        if row.image_id not in signs:
            continue
        kind, box = signs[row.image_id]
        mask = sign_view_mask(run, images[row.image_id][0].shape, box)
        if not mask.any():
            continue  # The crop cut the sign off (cannot happen for the generator's signs).
        per_kind.setdefault(kind, []).append(peak_cell_hit(row.map, mask) + (row.map.max() <= 0,))
    every = [v for values in per_kind.values() for v in values]
    if not every:
        raise ConfigError('none of the mapped images has a sign in the signs file: is it the '
                          "signs file of this run's dataset?")

    def summary(values):
        hits = np.array([hit for hit, _, _ in values], float)
        return {'images': len(values), 'peak_on_sign': float(hits.mean()),
                # Maps with no positive evidence anywhere (all zero) have no peak: counted as misses.
                'empty_maps': int(sum(1 for _, _, empty in values if empty)),
                'peak_on_sign_ci': list(metrics_lib.proportion_ci(int(hits.sum()), len(values))),
                'random_peak': float(np.mean([share for _, share, _ in values]))}
    return {'all': summary(every), **{kind: summary(v) for kind, v in sorted(per_kind.items())},
            'map_size': list(maps['map'].iloc[0].shape)}


def write_maps(run_dir: str, maps: pd.DataFrame, step: int) -> str:
    path = os.path.join(run_dir, run_files.CLASS_ACTIVATION_MAPS)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, image_ids=np.array(maps['image_id'], dtype=str),
                        labels=maps['label'].to_numpy(int),
                        probabilities=maps['probability'].to_numpy(float),
                        maps=np.stack(maps['map'].to_list()),
                        views=np.stack(maps['view'].to_list()), step=np.array(step))
    io_util.write_bytes_atomic(path, buffer.getvalue())
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    from absl import flags as absl_flags
    del argv
    flags = absl_flags.FLAGS
    try:
        run = load_run(flags.run, flags.data_dir)
        builder = data_lib.make_builder(run.config.dataset, run.config.data_dir)
        if not builder.is_prepared():
            raise ConfigError(data_lib.not_built_message(run.config.dataset, run.config.data_dir))
        split = flags.split or run.config.eval_split
        if flags.images:
            chosen = [i.strip() for i in flags.images.split(',') if i.strip()]
        elif run.predictions is not None:
            chosen = list(metrics_lib.confident_examples(run.predictions)['image_id'])
        else:
            raise ConfigError(f'{flags.run} has no predictions file: pass --images')
        signs = read_signs(flags.signs) if flags.signs else {}
        images = read_split_images(builder, split, None if signs else chosen)
        wanted = set(chosen) | {i for i in images if i in signs}
        maps = compute_maps(run, {i: images[i] for i in sorted(wanted)})
    except (ConfigError, ValueError) as e:
        print(f'gradcam: error: {e}', file=sys.stderr)
        return 2
    gallery = maps[maps['image_id'].isin(chosen)]
    path = write_maps(flags.run, gallery, run.step)
    print(f'gradcam: {len(gallery)} maps of {flags.run} (step {run.step}) in {path}')
    if signs:
        found = localization(run, maps, images, signs)
        found.update({'checkpoint': run.checkpoint, 'split': split, 'signs': flags.signs})
        out = os.path.join(flags.run, run_files.SIGN_LOCALIZATION)
        io_util.write_json_atomic(out, found)
        for kind in [k for k in found if isinstance(found[k], dict)]:
            row = found[kind]
            low, high = row['peak_on_sign_ci']
            print(f'{kind:>9}: peak on the sign in {row["peak_on_sign"]:.3f} [{low:.3f}, {high:.3f}] '
                  f'of {row["images"]} abnormal images (a random peak: {row["random_peak"]:.3f}; '
                  f'{row["empty_maps"]} all-zero maps)')
        print(f'gradcam: wrote {out}')
    logging.info('Done.')
    return 0


def define_flags() -> None:
    from absl import flags as absl_flags
    absl_flags.DEFINE_string('run', None, 'A finished fine-tuning, linear-eval or baseline run directory.')
    absl_flags.DEFINE_string('data_dir', None, "TFDS data_dir (default: the run's).")
    absl_flags.DEFINE_string('split', None, "Split of the images (default: the run's eval split).")
    absl_flags.DEFINE_string('images', None, "Comma-separated image ids (default: the gallery's).")
    absl_flags.DEFINE_string('signs', None, 'synthetic_signs.csv of a synthetic tree: also score '
                             'where the maps of its abnormal images peak.')
    absl_flags.mark_flags_as_required(['run'])


if __name__ == '__main__':
    from absl import app
    define_flags()
    app.run(main)
