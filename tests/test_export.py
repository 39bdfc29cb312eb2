"""Tests for simclr_mura.export: reload the exported SavedModel and predict from PNG bytes."""
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tiny_runs
from simclr_mura import export
from simclr_mura import model as model_lib


@pytest.fixture(scope='module')
def finetune(tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    model_dir, result, _ = tiny_runs.finetune_dir(base)
    return base, model_dir, result


def test_export_layout_and_pruning(finetune):
    _, model_dir, result = finetune
    assert result.export_path == os.path.join(model_dir, 'saved_model', '3')
    # keep_hub_module_max=1: only the newest export, and no temporary directories left behind.
    assert os.listdir(os.path.join(model_dir, 'saved_model')) == ['3']


def test_reloaded_savedmodel_predicts_png_bytes_like_the_eval(finetune):
    base, model_dir, result = finetune
    loaded = tf.saved_model.load(result.export_path)
    predictions = pd.read_csv(os.path.join(model_dir, 'predictions_test_3.csv'))
    manual = os.path.join(base, 'tiny_mura', 'manual', 'MURA-v1.1')
    pngs = [tf.io.read_file(os.path.join(manual, image_id)) for image_id in predictions['image_id']]
    served = loaded.signatures['serving_default'](image_bytes=tf.stack(pngs))
    np.testing.assert_allclose(served['probability'].numpy(), predictions['probability'], atol=2e-5)
    assert served['logits_sup'].shape == (len(pngs), 2)


def test_named_outputs_of_the_original(finetune):
    _, _, result = finetune
    loaded = tf.saved_model.load(result.export_path)
    outputs = loaded(tf.zeros([2, 64, 64, 3]), False)
    assert sorted(outputs) == sorted(export.NAMED_OUTPUTS)
    assert outputs['final_avg_pool'].shape == (2, 512)
    assert outputs['block_group4'].shape == (2, 2, 2, 512)
    assert outputs['logits_sup'].shape == (2, 2)
    assert len(loaded.trainable_variables_list) > 0


def test_keep_hub_module_max_prunes_older_exports(tmp_path):
    model = model_lib.Model(2, train_mode='finetune', resnet_depth=18, image_size=64, global_bn=False)
    model(tf.zeros([1, 64, 64, 3]), training=False)
    for step in (1, 2):
        os.makedirs(tmp_path / 'saved_model' / str(step))
    path = export.export(model, str(tmp_path), 3, image_size=64, keep_hub_module_max=2)
    assert path == str(tmp_path / 'saved_model' / '3')
    assert sorted(os.listdir(tmp_path / 'saved_model')) == ['2', '3']
    assert os.path.exists(tmp_path / 'saved_model' / '3' / 'saved_model.pb')
