"""End-to-end runs (simclr_mura.main): pretrain -> checkpoint -> eval -> finetune from it -> eval ->
export, on the tiny synthetic dataset, under MirroredStrategy with 2 logical CPUs and with 1."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

import tiny_mura
import tiny_runs
from simclr_mura import main
from simclr_mura.config import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    return str(tmp_path_factory.getbasetemp())


def _steps(model_dir):
    return sorted(int(f[len('ckpt-'):-len('.index')]) for f in os.listdir(model_dir)
                  if f.startswith('ckpt-') and f.endswith('.index'))


def test_pretrain_two_replicas_writes_everything(base):
    model_dir, result = tiny_runs.pretrain_dir(base)
    assert result.final_step == tiny_runs.PRETRAIN_STEPS
    assert _steps(model_dir) == [2, 4]  # one checkpoint per loop of checkpoint_steps=2
    for name in ('result.json', 'result_4.json', 'flags.json', 'predictions_validation_4.csv'):
        assert os.path.exists(os.path.join(model_dir, name)), name
    assert os.path.isdir(os.path.join(model_dir, 'saved_model', '4'))
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(model_dir))
    with open(os.path.join(model_dir, 'result.json')) as f:
        saved = json.load(f)
    assert saved['global_step'] == 4
    assert saved['eval/image/overall/num_examples'] == 11
    assert saved['eval/label_top_1_accuracy'] == pytest.approx(saved['eval/image/overall/accuracy'])
    assert 0 <= saved['eval/study/elbow/accuracy'] <= 1
    with open(os.path.join(model_dir, 'flags.json')) as f:
        flags = json.load(f)
    assert flags['train_mode'] == 'pretrain' and flags['resnet_depth'] == 18
    tags = _summary_tags(model_dir)
    for step in (2, 4):  # one summary per loop
        for tag in ('train/contrast_loss', 'train/contrast_acc', 'train/supervised_loss',
                    'train/weight_decay', 'train/total_loss', 'learning_rate', 'image'):
            assert (tag, step) in tags, (tag, step)
    assert ('eval/study/overall/kappa', 4) in tags and ('eval/label_top_1_accuracy', 4) in tags


def _summary_tags(model_dir):
    from tensorflow.core.util import event_pb2
    tags = set()
    for name in os.listdir(model_dir):
        if name.startswith('events.out.tfevents'):
            for record in tf.data.TFRecordDataset(os.path.join(model_dir, name)):
                event = event_pb2.Event.FromString(record.numpy())
                tags.update((value.tag, event.step) for value in event.summary.value)
    return tags


def test_finetune_from_pretraining_one_replica(base):
    pretrain, _ = tiny_runs.pretrain_dir(base)
    model_dir, result, _ = tiny_runs.finetune_dir(base)
    assert result.final_step == tiny_runs.FINETUNE_STEPS and _steps(model_dir) == [2, 3]
    predictions = pd.read_csv(os.path.join(model_dir, 'predictions_test_3.csv'))
    assert list(predictions.columns) == ['image_id', 'study_id', 'body_part', 'label', 'probability']
    assert len(predictions) == 4 and predictions['image_id'].is_unique
    assert predictions['probability'].between(0, 1).all()
    assert result.eval_result['eval/image/overall/num_examples'] == 4
    # Linear evaluation (fine_tune_after_block=4): the backbone is the pretrained one, unchanged.
    before = tf.train.load_checkpoint(os.path.join(pretrain, 'ckpt-4'))
    after = tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-3'))
    # Weights only: frozen BN layers still update their moving statistics, as in the original.
    keys = [k for k in after.get_variable_to_shape_map()
            if k.startswith('model/resnet_model/') and k.endswith('VARIABLE_VALUE')
            and 'OPTIMIZER_SLOT' not in k and '/moving_' not in k]
    assert len(keys) > 50
    for key in keys:
        np.testing.assert_array_equal(after.get_tensor(key), before.get_tensor(key), err_msg=key)
    head = 'model/supervised_head/linear_layer/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE'
    assert not np.array_equal(after.get_tensor(head), before.get_tensor(head))  # the head trained


def test_eval_mode_evaluates_latest_checkpoint_and_stops(base):
    model_dir, _, config = tiny_runs.finetune_dir(base)
    os.remove(os.path.join(model_dir, 'result.json'))
    result = main.run(config.replace(mode='eval', checkpoint=None), strategy=tiny_runs.strategy(1))
    assert result.eval_result['global_step'] == tiny_runs.FINETUNE_STEPS
    assert os.path.exists(os.path.join(model_dir, 'result.json'))
    # Same checkpoint, same images: the same predictions as the train_then_eval run.
    first = pd.read_csv(os.path.join(model_dir, 'predictions_test_3.csv'))
    assert result.eval_result['eval/image/overall/auroc'] == pytest.approx(_auroc(first), nan_ok=True)


def _auroc(predictions):
    if predictions['label'].nunique() < 2:
        return float('nan')
    return roc_auc_score(predictions['label'], predictions['probability'])


def test_finetune_without_checkpoint_is_refused(base, tmp_path):
    data_dir = tiny_mura.build(os.path.join(base, 'tiny_mura'))
    config = tiny_runs.base_config(data_dir, str(tmp_path / 'ft'), train_mode='finetune',
                                   train_steps=1)
    with pytest.raises(ConfigError, match='--train_mode=finetune needs --checkpoint'):
        main.run(config, strategy=tiny_runs.strategy(1))


def test_unknown_split_and_batch_not_divisible(base, tmp_path):
    data_dir = tiny_mura.build(os.path.join(base, 'tiny_mura'))
    config = tiny_runs.base_config(data_dir, str(tmp_path / 'x'), train_split='train_5pct')
    with pytest.raises(ConfigError, match="unknown split 'train_5pct' in mura/elbow"):
        main.run(config, strategy=tiny_runs.strategy(1))
    config = tiny_runs.base_config(data_dir, str(tmp_path / 'x'), train_batch_size=7)
    with pytest.raises(ConfigError, match='--train_batch_size=7 is not divisible by the 2 replicas'):
        main.run(config, strategy=tiny_runs.strategy(2))
    config = tiny_runs.base_config(data_dir, str(tmp_path / 'x'), train_split='train[:0%]')
    with pytest.raises(ConfigError, match=r'--train_split=train\[:0%\] has no examples'):
        main.run(config, strategy=tiny_runs.strategy(1))


def test_resuming_with_another_architecture_names_the_variable(base):
    model_dir, _ = tiny_runs.pretrain_dir(base)
    data_dir = tiny_mura.build(os.path.join(base, 'tiny_mura'))
    before = sorted(os.listdir(model_dir))
    with open(os.path.join(model_dir, 'flags.json')) as f:
        settings = f.read()
    config = tiny_runs.base_config(data_dir, model_dir, resnet_depth=34, train_steps=6)
    with pytest.raises(ConfigError, match=r'checkpoint in --model_dir .*ckpt-4 does not match the model '
                                          r'\(resnet_depth=34.*block_groups/0/layers/2/'):
        main.run(config, strategy=tiny_runs.strategy(1))
    assert sorted(os.listdir(model_dir)) == before  # nothing written
    with open(os.path.join(model_dir, 'flags.json')) as f:
        assert f.read() == settings  # the run's settings are still its own
