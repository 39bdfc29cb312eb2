"""A run whose --data_dir and --model_dir are not local paths: TensorFlow's in-memory `ram://`
file system stands in for cloud storage (gs://), so every file the run reads or writes must go
through tf.io.gfile (a plain `open` or `os.path` call fails on it).

Where ram:// differs from an object store (docs/cloud.md, docs/reliability.md): it lives in this
process only; like an object store its directories are name prefixes, but renaming a directory
renames only its marker, not the files under it (gs:// copies every object), so the export must
not rely on directory renames.
"""
import json
import os
import uuid

import pandas as pd
import pytest
import tensorflow as tf

import tiny_mura
import tiny_runs
from simclr_mura import data
from simclr_mura import main

pytestmark = pytest.mark.slow


def _copy_tree(source, target):
    for root, _, files in os.walk(source):
        rel = os.path.relpath(root, source)
        tf.io.gfile.makedirs(os.path.join(target, rel))
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), os.path.join(target, rel, name))


def test_train_evaluate_export_on_ram_filesystem(tmp_path_factory):
    local_data = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    root = f'ram://simclr_mura_{uuid.uuid4().hex}'
    data_dir, model_dir = f'{root}/tfds', f'{root}/run'
    _copy_tree(local_data, data_dir)
    try:
        config = tiny_runs.base_config(data_dir, model_dir, mode='train_then_eval',
                                       train_mode='finetune', allow_random_init=True,
                                       train_split='train_1pct', eval_split='test', train_steps=2,
                                       optimizer='momentum', learning_rate=0.1)
        result = main.run(config, strategy=tiny_runs.strategy(1))
        assert result.final_step == 2
        assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-2')
        names = set(tf.io.gfile.listdir(model_dir))
        assert {'result.json', 'result_2.json', 'flags.json', 'predictions_test_2.csv',
                'checkpoint'} <= names
        assert 'run.lock' not in names  # taken and released through tf.io.gfile
        assert any(n.startswith('events.out.tfevents') for n in names)
        with tf.io.gfile.GFile(f'{model_dir}/result.json') as f:
            assert json.load(f)['global_step'] == 2
        with tf.io.gfile.GFile(f'{model_dir}/predictions_test_2.csv') as f:
            predictions = pd.read_csv(f)
        builder = data.load_builder(tiny_mura.DATASET, data_dir)
        assert sorted(predictions['image_id']) == sorted(data.split_index(builder, 'test')['image_id'])
        # The export holds a loadable SavedModel under its step, and no leftovers.
        assert result.export_path == f'{model_dir}/saved_model/2'
        assert tf.io.gfile.exists(f'{result.export_path}/saved_model.pb')
        assert not tf.io.gfile.glob(f'{model_dir}/saved_model/.tmp-*')
        assert tf.saved_model.load(result.export_path).signatures['serving_default'] is not None
    finally:
        if tf.io.gfile.exists(root):
            tf.io.gfile.rmtree(root)
