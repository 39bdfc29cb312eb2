"""A run whose --model_dir is not a local path: TensorFlow's in-memory `ram://` file system stands
in for cloud storage (gs://), so every file the run writes or reads back there must go through
tf.io.gfile (a plain `open` or `os.path` call fails on it). --data_dir stays local: TFDS opens its
files through etils.epath, which knows gs:// but not ram://.

Where ram:// differs from an object store (docs/cloud.md, docs/reliability.md): it lives in this
process only; like an object store its directories are name prefixes, but renaming a directory
renames only its marker, not the files under it (gs:// copies every object), so the export must
not rely on directory renames.
"""
import json
import uuid

import pandas as pd
import pytest
import tensorflow as tf

import tiny_mura
import tiny_runs
from simclr_mura import data
from simclr_mura import main

pytestmark = pytest.mark.slow


def test_train_evaluate_export_on_ram_filesystem(tmp_path_factory):
    data_dir = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    root = f'ram://simclr_mura_{uuid.uuid4().hex}'
    model_dir = f'{root}/run'
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
        builder = data.make_builder(tiny_mura.DATASET, data_dir)
        assert sorted(predictions['image_id']) == sorted(data.split_index(builder, 'test')['image_id'])
        # The export holds a loadable SavedModel under its step, and no leftovers.
        assert result.export_path == f'{model_dir}/saved_model/2'
        assert tf.io.gfile.exists(f'{result.export_path}/saved_model.pb')
        assert not tf.io.gfile.glob(f'{model_dir}/saved_model/.tmp-*')
        assert tf.saved_model.load(result.export_path).signatures['serving_default'] is not None
    finally:
        if tf.io.gfile.exists(root):
            tf.io.gfile.rmtree(root)
