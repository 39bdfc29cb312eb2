"""Tests for simclr_mura.evaluate: predictions, result files, eval_steps, study-level switch."""
import json
import os

import pandas as pd
import pytest

import tiny_mura
import tiny_runs
from simclr_mura import data
from simclr_mura import evaluate
from simclr_mura import recipes


@pytest.mark.slow
def test_evaluate_limited_steps_without_study_level(tmp_path_factory, tmp_path):
    base = str(tmp_path_factory.getbasetemp())
    pretrain, _ = tiny_runs.pretrain_dir(base)
    data_dir = tiny_mura.build(os.path.join(base, 'tiny_mura'))
    config = tiny_runs.base_config(data_dir, str(tmp_path), mode='eval', eval_steps=1,
                                   eval_study_level=False, eval_batch_size=4)
    builder = data.make_builder(config.dataset, data_dir)
    data.ensure_prepared(builder)
    strategy = tiny_runs.strategy(2)
    with strategy.scope():
        model = recipes.for_config(config).build_model(num_classes=2)
    result = evaluate.evaluate(config, model, builder, strategy, os.path.join(pretrain, 'ckpt-2'))
    assert result['global_step'] == 2
    assert result['eval/image/overall/num_examples'] == 4  # one global batch of 4
    assert not any(key.startswith('eval/study/') for key in result)
    predictions = pd.read_csv(tmp_path / 'predictions_validation_2.csv')
    assert len(predictions) == 4 and predictions['image_id'].is_unique
    with open(tmp_path / 'result_2.json') as f:
        saved = json.load(f)
    # Undefined metrics are written as JSON null, never as NaN.
    assert all(v is None or v == v for v in saved.values())
    assert saved['eval/image/overall/accuracy'] == pytest.approx(
        ((predictions['probability'] > 0.5) == predictions['label']).mean())
    with open(tmp_path / 'flags.json') as f:
        assert json.load(f)['eval_steps'] == 1
