"""How good is a pretraining checkpoint's representation, without a fine-tune?

`python -m simclr_mura.probe --checkpoint RUN --data_dir D --dataset mura/elbow` freezes the
encoder of RUN (a run directory, checkpoint prefix or SavedModel), takes its global-pooled features
(`final_avg_pool`, what linear evaluation trains on) of the evaluation view (centre crop) of every
image, fits a logistic regression (scikit-learn) on the images of each training split (`train_1pct`,
`train_10pct`, `train`) and scores the eval split at study level (mean image probability per
study), with percentile-bootstrap CIs over studies. The control is the same procedure on a randomly
initialised encoder of the same architecture, once per `--seeds` value (the pretrained encoder's
features and the classifier are deterministic, so its rows are computed once, seed None).

The classifier: features standardised on the training split, L2-regularised logistic regression,
its strength C picked from a fixed grid by study-grouped, stratified k-fold cross-validation (AUROC)
on the training split alone (k = min(5, studies of the rarer class), plain fit when k < 2), so the
eval split is never looked at. Class-balanced weights, as the MURA weighting balances the loss.

Writes `probe.json` (one row per encoder x training split x seed, plus the settings) to `--out`
(default: the checkpoint's run directory) atomically; the report shows it as its own table.
Architecture settings come from the run's `flags.json` when it has one, else from the flags.
"""
if __name__ == '__main__':  # As a command: TensorFlow's start-up notices filtered (tf_env.py).
    from simclr_mura import tf_env
    tf_env.import_tensorflow()

import dataclasses
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras
from absl import logging

from simclr_mura import checkpoints
from simclr_mura import data as data_lib
from simclr_mura import io_util
from simclr_mura import metrics as metrics_lib
from simclr_mura import model as model_lib
from simclr_mura.config import ConfigError
from simclr_mura.study import run_files

RESULT_FILE = run_files.PROBE  # The study reads it (study/run_files.py).
TRAIN_SPLITS = ('train_1pct', 'train_10pct', 'train')
# Regularisation strengths tried (weak regularisation of 512-2048 features converges slowly and
# over-fits the small label fractions).
C_GRID = tuple(float(c) for c in np.logspace(-4, 0, 5))
ARCHITECTURE_KEYS = ('resnet_depth', 'width_multiplier', 'sk_ratio', 'se_ratio', 'image_size',
                     'proj_head_mode', 'proj_out_dim', 'num_proj_layers', 'global_bn',
                     'batch_norm_decay')


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What the probe needs to rebuild an encoder (defaults: the original's)."""
    resnet_depth: int = 50
    width_multiplier: int = 1
    sk_ratio: float = 0.0
    se_ratio: float = 0.0
    image_size: int = 224
    proj_head_mode: str = 'nonlinear'
    proj_out_dim: int = 128
    num_proj_layers: int = 3
    global_bn: bool = True
    batch_norm_decay: float = 0.9

    def describe(self) -> str:
        return (f'resnet_depth={self.resnet_depth}, width_multiplier={self.width_multiplier}, '
                f'sk_ratio={self.sk_ratio}, se_ratio={self.se_ratio}, image_size={self.image_size}')


def run_directory(checkpoint: str) -> str:
    """The run directory of a run directory, a checkpoint prefix or a SavedModel directory."""
    if tf.io.gfile.isdir(checkpoint):
        if tf.io.gfile.exists(os.path.join(checkpoint, 'saved_model.pb')):
            return os.path.dirname(os.path.dirname(checkpoint.rstrip('/')))  # <run>/saved_model/<step>
        return checkpoint
    return os.path.dirname(checkpoint)


def architecture_of(checkpoint: str, overrides: Dict[str, object]) -> Architecture:
    """The run's architecture from its flags.json (if any), with explicit overrides on top."""
    values = {}
    flags_path = os.path.join(run_directory(checkpoint), run_files.FLAGS)
    if tf.io.gfile.exists(flags_path):
        with tf.io.gfile.GFile(flags_path) as f:
            saved = json.load(f)
        values = {k: saved[k] for k in ARCHITECTURE_KEYS if k in saved}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Architecture(**values)


def build_encoder(arch: Architecture, num_classes: int = 2) -> model_lib.Model:
    """A built SimCLR model (pretrain layout, so any SimCLR checkpoint's encoder fits it)."""
    model = model_lib.Model(
        num_classes, train_mode='pretrain', lineareval_while_pretraining=True,
        resnet_depth=arch.resnet_depth, width_multiplier=arch.width_multiplier,
        sk_ratio=arch.sk_ratio, se_ratio=arch.se_ratio, image_size=arch.image_size,
        global_bn=arch.global_bn, batch_norm_decay=arch.batch_norm_decay,
        proj_head_mode=arch.proj_head_mode, proj_out_dim=arch.proj_out_dim,
        num_proj_layers=arch.num_proj_layers)
    model(tf.zeros([1, arch.image_size, arch.image_size, 3]), training=False)
    return model


def extract_features(model, builder, split: str, image_size: int,
                     batch_size: int = 128) -> pd.DataFrame:
    """One row per image of `split`: the split index's columns plus `features` (an array)."""
    input_fn = data_lib.build_input_fn(builder, split, batch_size, is_training=False,
                                       is_pretrain=False, image_size=image_size)
    dataset = input_fn(tf.distribute.InputContext())

    @tf.function
    def step(images):
        return model.named_outputs(images, training=False)['final_avg_pool']

    keys, features = [], []
    for images, targets in dataset:
        keys.append(targets['key'].numpy())
        features.append(step(images).numpy())
    keys = np.concatenate(keys)
    features = np.concatenate(features).astype(np.float64)
    real = keys != data_lib.PADDING_KEY
    found = pd.DataFrame({'key': keys[real], 'row': np.arange(len(keys))[real]})
    table = found.merge(data_lib.split_index(builder, split), on='key', how='left',
                        validate='one_to_one')
    table['features'] = list(features[table['row'].to_numpy()])
    return table.drop(columns='row').sort_values('image_id').reset_index(drop=True)


def _folds(labels: np.ndarray, groups: np.ndarray) -> int:
    studies = pd.DataFrame({'label': labels, 'group': groups}).drop_duplicates('group')
    return int(min(5, studies['label'].value_counts().min() if studies['label'].nunique() == 2 else 0))


def fit_classifier(features: np.ndarray, labels: np.ndarray, groups: np.ndarray):
    """Standardise + logistic regression, C by study-grouped stratified CV; returns the pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def make(c):
        return make_pipeline(StandardScaler(),
                             LogisticRegression(C=c, class_weight='balanced', max_iter=5000))

    if len(np.unique(labels)) < 2:
        raise ValueError('the training split holds one class only; a classifier cannot be fitted')
    folds = _folds(labels, groups)
    best_c = 1.0
    if folds >= 2:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0)
        scores = [np.mean(cross_val_score(make(c), features, labels, groups=groups, cv=splitter,
                                          scoring='roc_auc')) for c in C_GRID]
        best_c = C_GRID[int(np.nanargmax(scores))]
    return make(best_c).fit(features, labels), best_c


def score(train: pd.DataFrame, test: pd.DataFrame, num_resamples: int) -> Dict[str, object]:
    """Fits on `train`'s features and scores `test` at study level (and image level)."""
    x_train = np.stack(train['features'])
    classifier, best_c = fit_classifier(x_train, train['label'].to_numpy(),
                                        train['study_id'].to_numpy())
    predictions = test[list(metrics_lib.PREDICTION_COLUMNS[:-1])].copy()
    predictions['probability'] = classifier.predict_proba(np.stack(test['features']))[:, 1]
    computed = metrics_lib.compute_metrics(predictions)
    ci = metrics_lib.bootstrap_ci(predictions, 'study', num_resamples=num_resamples)
    return {'study_auroc': computed['study'][metrics_lib.OVERALL]['auroc'],
            'study_kappa': computed['study'][metrics_lib.OVERALL]['kappa'],
            'image_auroc': computed['image'][metrics_lib.OVERALL]['auroc'],
            'study_auroc_ci': list(ci['auroc']), 'study_kappa_ci': list(ci['kappa']),
            'C': best_c, 'num_train_images': int(len(train)),
            'num_train_studies': int(train['study_id'].nunique())}


def probe(checkpoint: str, builder, *, arch: Architecture, train_splits: Sequence[str] = TRAIN_SPLITS,
          eval_split: str = 'test', seeds: Sequence[int] = (0,), num_resamples: int = 1000,
          batch_size: int = 128) -> Dict[str, object]:
    """The probe's rows for the checkpoint's encoder and for random encoders (one per seed).

    Raises:
      ConfigError: no checkpoint at `checkpoint`, or one of another architecture.
    """
    num_classes = builder.info.features['label'].num_classes
    splits = list(dict.fromkeys([*train_splits, eval_split]))
    encoders = {}
    pretrained = build_encoder(arch, num_classes)
    restored = checkpoints.initialize_from_checkpoint(pretrained, checkpoint, False, arch.describe())
    encoders['pretrained'] = pretrained
    rows: List[Dict[str, object]] = []
    features = {}
    for seed in seeds:
        tf_keras.utils.set_random_seed(seed)
        encoders[f'random/{seed}'] = build_encoder(arch, num_classes)
    for name, model in encoders.items():
        start = time.time()
        features[name] = {s: extract_features(model, builder, s, arch.image_size, batch_size)
                          for s in splits}
        logging.info('Probe: %s encoder features of %s in %.1f s.', name.split('/')[0],
                     ', '.join(splits), time.time() - start)
    for name in encoders:
        encoder, _, seed = name.partition('/')
        for split in train_splits:
            result = score(features[name][split], features[name][eval_split], num_resamples)
            rows.append({'encoder': encoder, 'seed': int(seed) if seed else None,
                         'train_split': split, 'eval_split': eval_split, **result})
            logging.info('Probe %-10s seed %-4s %-12s -> study AUROC %.3f [%.3f, %.3f] (C %g)',
                         encoder, seed or '-', split, result['study_auroc'],
                         *result['study_auroc_ci'], result['C'])
    return {'checkpoint': restored.checkpoint_path, 'dataset': builder.info.full_name,
            'architecture': dataclasses.asdict(arch), 'features': 'final_avg_pool',
            'bootstrap_resamples': num_resamples, 'rows': rows}


def write(result: Dict[str, object], out_dir: str) -> str:
    tf.io.gfile.makedirs(out_dir)
    path = os.path.join(out_dir, RESULT_FILE)
    io_util.write_json_atomic(path, result)
    return path


def summary_table(result: Dict[str, object]) -> pd.DataFrame:
    """Study AUROC per training split and encoder: mean and sd over seeds (random encoders)."""
    rows = pd.DataFrame(result['rows'])
    return (rows.groupby(['train_split', 'encoder'], sort=False)['study_auroc']
            .agg(mean='mean', sd='std', seeds='count').reset_index())


def main(argv: Optional[Sequence[str]] = None) -> int:
    from absl import flags as absl_flags
    del argv
    flags = absl_flags.FLAGS
    seeds = [int(s) for s in flags.seeds.split(',') if s.strip()]
    splits = [s.strip() for s in flags.train_splits.split(',') if s.strip()]
    overrides = {'resnet_depth': flags.resnet_depth, 'width_multiplier': flags.width_multiplier,
                 'image_size': flags.image_size}
    try:
        arch = architecture_of(flags.checkpoint, overrides)
        builder = data_lib.make_builder(flags.dataset, flags.data_dir)
        if not builder.is_prepared():
            raise ConfigError(data_lib.not_built_message(flags.dataset, flags.data_dir))
        unknown = [s for s in [*splits, flags.eval_split] if s not in builder.info.splits]
        if unknown:
            raise ConfigError(f'split {unknown[0]!r} is not in {flags.dataset} (it has '
                              f'{", ".join(builder.info.splits)})')
        result = probe(flags.checkpoint, builder, arch=arch, train_splits=splits,
                       eval_split=flags.eval_split, seeds=seeds,
                       num_resamples=flags.bootstrap_resamples)
    except (ConfigError, ValueError) as e:
        print(f'probe: error: {e}', file=sys.stderr)
        return 2
    path = write(result, flags.out or run_directory(flags.checkpoint))
    table = summary_table(result)
    print(table.to_string(index=False, float_format=lambda v: f'{v:.3f}'))
    print(f'probe: wrote {path}')
    return 0


def define_flags() -> None:
    from absl import flags as absl_flags
    absl_flags.DEFINE_string('checkpoint', None, 'Run directory, checkpoint prefix or SavedModel.')
    absl_flags.DEFINE_string('data_dir', None, 'TFDS data_dir holding the built mura dataset.')
    absl_flags.DEFINE_string('dataset', 'mura/elbow', 'TFDS dataset name (mura/<part>).')
    absl_flags.DEFINE_string('train_splits', ','.join(TRAIN_SPLITS), 'Splits the classifier is fit on.')
    absl_flags.DEFINE_string('eval_split', 'test', 'Split scored at study level.')
    absl_flags.DEFINE_string('seeds', '0', 'Comma-separated seeds of the random-encoder control.')
    absl_flags.DEFINE_integer('bootstrap_resamples', 1000, 'Bootstrap resamples of the CIs.')
    absl_flags.DEFINE_string('out', None, 'Where probe.json goes (default: the run directory).')
    absl_flags.DEFINE_integer('resnet_depth', None, 'Override flags.json (or set it without one).')
    absl_flags.DEFINE_integer('width_multiplier', None, 'Override flags.json.')
    absl_flags.DEFINE_integer('image_size', None, 'Override flags.json.')
    absl_flags.mark_flags_as_required(['checkpoint'])


if __name__ == '__main__':
    from absl import app
    define_flags()
    app.run(main)
