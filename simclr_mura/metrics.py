"""Image- and study-level metrics for MURA (binary: 0 = normal, 1 = abnormal), via scikit-learn.

Input: a pandas DataFrame of per-image predictions with the columns of `PREDICTION_COLUMNS`
(`probability` is the predicted probability of 'abnormal').

Image level: an image is predicted abnormal when its probability is > 0.5 (the argmax of a 2-way
softmax, where a tie goes to class 0).
Study level (the MURA paper): a study's probability is the arithmetic mean of its images'
probabilities, and the study is predicted abnormal when that mean is > 0.5.

Metrics are computed overall and per body part. Undefined values are NaN, never an exception:
AUROC when a group holds only one class; precision when nothing is predicted abnormal; recall when
no example is abnormal; specificity when no example is normal; Cohen's kappa when chance agreement
is 1 (both raters constant and equal). NaN is written to JSON as null by `evaluate`.

`bootstrap_ci` gives percentile confidence intervals of kappa and AUROC by resampling studies.
"""
import math
import warnings
from typing import Dict, Tuple

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

PREDICTION_COLUMNS = ('image_id', 'study_id', 'body_part', 'label', 'probability')
THRESHOLD = 0.5
OVERALL = 'overall'


def check_predictions(df: pd.DataFrame) -> None:
    """Raises ValueError if `df` lacks a column, has labels other than 0/1, or bad probabilities."""
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f'predictions lack the columns {missing}; expected {list(PREDICTION_COLUMNS)}')
    if not df['label'].isin([0, 1]).all():
        raise ValueError('labels must be 0 (normal) or 1 (abnormal); found '
                         f'{sorted(set(df["label"].tolist()) - {0, 1})[:5]}')
    probs = df['probability'].to_numpy(dtype=float)
    if np.isnan(probs).any() or (probs < 0).any() or (probs > 1).any():
        raise ValueError('probabilities must be in [0, 1] and not NaN')


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray) -> Dict[str, float]:
    """Metrics of one group of examples (images or studies).

    Args:
      labels: 0/1 ground truth.
      probabilities: predicted probability of class 1; predictions are probabilities > 0.5.

    Returns:
      num_examples, num_abnormal, accuracy, precision, recall (= sensitivity), specificity, f1,
      kappa (Cohen's) and auroc. Undefined metrics are NaN (see the module docstring).
    """
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    predictions = (probabilities > THRESHOLD).astype(int)
    n = len(labels)
    result = {'num_examples': float(n), 'num_abnormal': float(labels.sum())}
    if n == 0:
        for name in ('accuracy', 'precision', 'recall', 'specificity', 'f1', 'kappa', 'auroc'):
            result[name] = math.nan
        return result
    with warnings.catch_warnings():
        # sklearn warns when a group holds one class; the NaNs it then returns are documented above.
        warnings.simplefilter('ignore', UserWarning)
        warnings.simplefilter('ignore', RuntimeWarning)
        tn, fp, _, _ = skm.confusion_matrix(labels, predictions, labels=[0, 1]).ravel()
        result['accuracy'] = float(skm.accuracy_score(labels, predictions))
        result['precision'] = float(skm.precision_score(labels, predictions, zero_division=np.nan))
        result['recall'] = float(skm.recall_score(labels, predictions, zero_division=np.nan))
        result['specificity'] = float(tn / (tn + fp)) if tn + fp else math.nan
        result['f1'] = float(skm.f1_score(labels, predictions, zero_division=np.nan))
        result['kappa'] = float(skm.cohen_kappa_score(labels, predictions, labels=[0, 1]))
    result['auroc'] = (float(skm.roc_auc_score(labels, probabilities))
                       if 0 < labels.sum() < n else math.nan)
    return result


def study_predictions(df: pd.DataFrame) -> pd.DataFrame:
    """One row per study: study_id, body_part, label, probability (mean of its images), num_images.

    Raises:
      ValueError: the images of one study disagree on the label or the body part.
    """
    check_predictions(df)
    grouped = df.groupby('study_id', sort=True)
    inconsistent = grouped['label'].nunique() > 1
    if inconsistent.any():
        raise ValueError(f'study {inconsistent[inconsistent].index[0]!r} has images with different labels')
    mixed_parts = grouped['body_part'].nunique() > 1
    if mixed_parts.any():
        raise ValueError(f'study {mixed_parts[mixed_parts].index[0]!r} has images of several body parts')
    studies = grouped.agg(body_part=('body_part', 'first'), label=('label', 'first'),
                          probability=('probability', 'mean'), num_images=('image_id', 'size'))
    return studies.reset_index()


def _by_body_part(df: pd.DataFrame) -> Dict[str, Dict[str, float]]:
    out = {OVERALL: binary_metrics(df['label'].to_numpy(), df['probability'].to_numpy())}
    for part, group in df.groupby('body_part', sort=True):
        out[str(part)] = binary_metrics(group['label'].to_numpy(), group['probability'].to_numpy())
    return out


def compute_metrics(df: pd.DataFrame, study_level: bool = True) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Image-level (and optionally study-level) metrics, overall and per body part.

    Args:
      df: per-image predictions with the columns of `PREDICTION_COLUMNS`.
      study_level: also aggregate images into studies (mean probability > 0.5).

    Returns:
      {'image': {'overall': {...}, '<body part>': {...}}, 'study': {...}} with the metrics of
      `binary_metrics` in each leaf; 'study' is absent when `study_level` is False.
    """
    check_predictions(df)
    result = {'image': _by_body_part(df)}
    if study_level:
        result['study'] = _by_body_part(study_predictions(df))
    return result


def flatten(metrics: Dict[str, Dict[str, Dict[str, float]]], prefix: str = 'eval') -> Dict[str, float]:
    """{'image': {'overall': {'auroc': x}}} -> {'eval/image/overall/auroc': x} for summaries and JSON."""
    flat = {}
    for level, groups in metrics.items():
        for group, values in groups.items():
            for name, value in values.items():
                flat[f'{prefix}/{level}/{group}/{name}'] = value
    return flat


def fast_kappa(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Cohen's kappa of two 0/1 raters (as sklearn's), NaN when chance agreement is 1."""
    n = len(labels)
    if n == 0:
        return math.nan
    observed = float(np.mean(labels == predictions))
    p_label, p_pred = float(np.mean(labels)), float(np.mean(predictions))
    chance = p_label * p_pred + (1 - p_label) * (1 - p_pred)
    return math.nan if chance >= 1 else (observed - chance) / (1 - chance)


def fast_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic (ties count half, as sklearn's); NaN with one class."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = stats.rankdata(probabilities)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_ci(df: pd.DataFrame, level: str = 'study', num_resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> Dict[str, Tuple[float, float]]:
    """Percentile bootstrap confidence intervals of kappa and AUROC, resampling studies.

    Studies, not images, are drawn with replacement because the views of one study are not
    independent; at image level a drawn study brings all its images. A resample holding one class
    only (kappa or AUROC undefined) is left out of that metric's interval.

    Args:
      df: per-image predictions (`PREDICTION_COLUMNS`).
      level: 'study' (metrics of study predictions, mean probability > 0.5) or 'image'.
      num_resamples: bootstrap resamples; seed: their random generator's seed (fixed: the same
        predictions always give the same interval).
      confidence: coverage of the interval.

    Returns:
      {'kappa': (low, high), 'auroc': (low, high)}, NaN bounds when no resample defines the metric.
    """
    if level not in ('study', 'image'):
        raise ValueError(f'level must be study or image, not {level!r}')
    studies = study_predictions(df)
    if level == 'study':
        labels = studies['label'].to_numpy(dtype=int)
        probabilities = studies['probability'].to_numpy(dtype=float)
        members = [np.array([i]) for i in range(len(studies))]
    else:
        labels = df['label'].to_numpy(dtype=int)
        probabilities = df['probability'].to_numpy(dtype=float)
        positions = pd.Series(np.arange(len(df))).groupby(df['study_id'].to_numpy()).apply(np.asarray)
        members = [positions[s] for s in studies['study_id']]
    rng = np.random.default_rng(seed)
    values = {'kappa': [], 'auroc': []}
    for _ in range(num_resamples):
        drawn = rng.integers(0, len(members), len(members))
        rows = np.concatenate([members[i] for i in drawn])
        y, p = labels[rows], probabilities[rows]
        values['kappa'].append(fast_kappa(y, (p > THRESHOLD).astype(int)))
        values['auroc'].append(fast_auroc(y, p))
    tail = (1 - confidence) / 2 * 100
    out = {}
    for name, found in values.items():
        found = np.asarray(found, dtype=float)
        found = found[~np.isnan(found)]
        out[name] = ((float(np.percentile(found, tail)), float(np.percentile(found, 100 - tail)))
                     if len(found) else (math.nan, math.nan))
    return out


def confident_examples(predictions: pd.DataFrame, per_kind: int = 4) -> pd.DataFrame:
    """The `per_kind` most confident right and most confident wrong image predictions, with a
    'kind' column ('correct' / 'wrong'), most confident first."""
    table = predictions.copy()
    table['confidence'] = (table['probability'] - 0.5).abs()
    table['correct'] = (table['probability'] > THRESHOLD).astype(int) == table['label']
    table = table.sort_values(['confidence', 'image_id'], ascending=[False, True])
    right = table[table['correct']].head(per_kind).assign(kind='correct')
    wrong = table[~table['correct']].head(per_kind).assign(kind='wrong')
    return pd.concat([right, wrong], ignore_index=True)


def proportion_ci(successes: int, trials: int, z: float = 1.959964) -> Tuple[float, float]:
    """Wilson score interval (95% by default) of a proportion `successes / trials`."""
    if trials <= 0:
        return math.nan, math.nan
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
