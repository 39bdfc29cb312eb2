"""Tests for simclr_mura.metrics against hand-computed values and direct scikit-learn calls."""
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from simclr_mura import metrics


def _example():
    # study A (elbow, abnormal): 0.9, 0.4 -> mean 0.65 -> abnormal (TP)
    # study B (elbow, normal):   0.6      -> 0.6        -> abnormal (FP)
    # study C (hand, abnormal):  0.2, 0.3, 0.5 -> 1/3   -> normal   (FN)
    # study D (hand, normal):    0.1      -> normal (TN)
    rows = [('a1', 'A', 'elbow', 1, 0.9), ('a2', 'A', 'elbow', 1, 0.4), ('b1', 'B', 'elbow', 0, 0.6),
            ('c1', 'C', 'hand', 1, 0.2), ('c2', 'C', 'hand', 1, 0.3), ('c3', 'C', 'hand', 1, 0.5),
            ('d1', 'D', 'hand', 0, 0.1)]
    return pd.DataFrame(rows, columns=list(metrics.PREDICTION_COLUMNS))


def test_image_level_hand_computed():
    m = metrics.compute_metrics(_example())['image']['overall']
    # Predictions (p > 0.5; 0.5 itself is normal): TP=1 (0.9), FN=4, FP=1 (0.6), TN=1.
    assert m['num_examples'] == 7 and m['num_abnormal'] == 5
    assert m['accuracy'] == pytest.approx(2 / 7)
    assert m['precision'] == pytest.approx(1 / 2)
    assert m['recall'] == pytest.approx(1 / 5)
    assert m['specificity'] == pytest.approx(1 / 2)
    assert m['f1'] == pytest.approx(2 * 0.5 * 0.2 / 0.7)
    # po = 2/7, pe = (2/7)(5/7) + (5/7)(2/7) = 20/49 -> kappa = -6/29.
    assert m['kappa'] == pytest.approx(-6 / 29)
    # 6 of the 10 (abnormal, normal) pairs are ranked correctly.
    assert m['auroc'] == pytest.approx(0.6)


def test_study_level_hand_computed():
    result = metrics.compute_metrics(_example())
    studies = metrics.study_predictions(_example()).set_index('study_id')
    assert studies.loc['A', 'probability'] == pytest.approx(0.65)
    assert studies.loc['C', 'probability'] == pytest.approx(1 / 3)
    assert studies.loc['C', 'num_images'] == 3
    overall = result['study']['overall']
    assert overall['num_examples'] == 4
    assert (overall['accuracy'], overall['precision'], overall['recall']) == pytest.approx((0.5, 0.5, 0.5))
    assert overall['kappa'] == pytest.approx(0.0)
    assert overall['auroc'] == pytest.approx(0.75)
    elbow, hand = result['study']['elbow'], result['study']['hand']
    assert elbow['recall'] == 1.0 and elbow['specificity'] == 0.0 and elbow['auroc'] == 1.0
    assert math.isnan(hand['precision'])  # nothing predicted abnormal
    assert hand['recall'] == 0.0 and hand['auroc'] == 1.0


def test_one_class_group_gives_nan_auroc():
    df = _example()
    df = df[df['label'] == 0]
    m = metrics.compute_metrics(df)
    assert math.isnan(m['image']['overall']['auroc'])
    assert math.isnan(m['image']['overall']['recall'])
    assert m['image']['overall']['accuracy'] == pytest.approx(0.5)


def test_matches_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    n_studies = 60
    rows = []
    for s in range(n_studies):
        label = int(rng.integers(0, 2))
        part = ['elbow', 'hand', 'shoulder'][s % 3]
        for v in range(int(rng.integers(1, 5))):
            p = float(np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0, 1))
            rows.append((f's{s}/image{v}', f's{s}', part, label, p))
    df = pd.DataFrame(rows, columns=list(metrics.PREDICTION_COLUMNS))
    result = metrics.compute_metrics(df)
    y, p = df['label'].to_numpy(), df['probability'].to_numpy()
    img = result['image']['overall']
    assert img['auroc'] == pytest.approx(skm.roc_auc_score(y, p))
    assert img['f1'] == pytest.approx(skm.f1_score(y, p > 0.5))
    assert img['kappa'] == pytest.approx(skm.cohen_kappa_score(y, p > 0.5))
    # Study level by an independent aggregation in plain Python.
    sums, counts, labels = {}, {}, {}
    for _, study, _, label, prob in rows:
        sums[study] = sums.get(study, 0.0) + prob
        counts[study] = counts.get(study, 0) + 1
        labels[study] = label
    ids = sorted(sums)
    sy = np.array([labels[s] for s in ids])
    sp = np.array([sums[s] / counts[s] for s in ids])
    st = result['study']['overall']
    assert st['num_examples'] == n_studies
    assert st['kappa'] == pytest.approx(skm.cohen_kappa_score(sy, sp > 0.5))
    assert st['auroc'] == pytest.approx(skm.roc_auc_score(sy, sp))
    shoulder = [i for i, s in enumerate(ids) if int(s[1:]) % 3 == 2]
    assert result['study']['shoulder']['accuracy'] == pytest.approx(
        skm.accuracy_score(sy[shoulder], sp[shoulder] > 0.5))


def test_bad_input_messages():
    df = _example()
    with pytest.raises(ValueError, match='lack the columns'):
        metrics.compute_metrics(df.drop(columns=['study_id']))
    bad = df.copy()
    bad.loc[0, 'label'] = 0
    with pytest.raises(ValueError, match="study 'A' has images with different labels"):
        metrics.compute_metrics(bad)
    bad = df.copy()
    bad.loc[0, 'probability'] = 1.5
    with pytest.raises(ValueError, match=r'in \[0, 1\]'):
        metrics.compute_metrics(bad)


def test_study_level_optional_and_flatten():
    result = metrics.compute_metrics(_example(), study_level=False)
    assert set(result) == {'image'}
    flat = metrics.flatten(result)
    assert flat['eval/image/overall/auroc'] == pytest.approx(0.6)
    assert 'eval/image/hand/accuracy' in flat


def _random_studies(num_studies, seed, signal=1.0):
    """Predictions of `num_studies` studies with 1-3 views each, informative by `signal`."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(num_studies):
        label = int(rng.random() < 0.45)
        for v in range(int(rng.integers(1, 4))):
            p = 1 / (1 + np.exp(-(signal * (2 * label - 1) + rng.normal(0, 1.2))))
            rows.append((f's{s}/image{v}', f's{s}', 'elbow', label, float(p)))
    return pd.DataFrame(rows, columns=list(metrics.PREDICTION_COLUMNS))


def test_fast_kappa_and_auroc_equal_sklearn():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 2, 40)
        p = np.round(rng.random(40), 1)  # Ties, which AUROC counts half.
        assert metrics.fast_auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
        pred = (p > 0.5).astype(int)
        assert metrics.fast_kappa(y, pred) == pytest.approx(skm.cohen_kappa_score(y, pred), abs=1e-12)
    assert math.isnan(metrics.fast_auroc(np.ones(5, int), rng.random(5)))
    assert math.isnan(metrics.fast_kappa(np.ones(5, int), np.ones(5, int)))


@pytest.mark.parametrize('level', ['study', 'image'])
def test_bootstrap_ci_contains_point_estimate_and_is_reproducible(level):
    df = _random_studies(80, seed=0)
    point = metrics.compute_metrics(df)[level]['overall']
    ci = metrics.bootstrap_ci(df, level, num_resamples=400, seed=0)
    for name in ('kappa', 'auroc'):
        low, high = ci[name]
        assert low < point[name] < high, (name, low, point[name], high)
        assert high - low < 0.6
    assert metrics.bootstrap_ci(df, level, num_resamples=400, seed=0) == ci
    assert metrics.bootstrap_ci(df, level, num_resamples=400, seed=1) != ci


def test_bootstrap_resamples_studies_so_more_studies_give_narrower_intervals():
    small = metrics.bootstrap_ci(_random_studies(30, seed=1), 'study', num_resamples=400)
    large = metrics.bootstrap_ci(_random_studies(600, seed=1), 'study', num_resamples=400)
    for name in ('kappa', 'auroc'):
        assert large[name][1] - large[name][0] < (small[name][1] - small[name][0]) / 2


def test_bootstrap_of_one_class_is_nan_and_bad_level_raises():
    df = _random_studies(10, seed=2)
    df['label'] = 1
    ci = metrics.bootstrap_ci(df, 'study', num_resamples=50)
    assert all(math.isnan(v) for v in ci['auroc'])
    with pytest.raises(ValueError, match='study or image'):
        metrics.bootstrap_ci(df, 'patient')
