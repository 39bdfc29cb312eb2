"""The frozen-feature probe: classifier and scoring on made-up features, then the real thing on
the shared tiny pretraining run (ResNet-18, 64 px)."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras

import tiny_mura
import tiny_runs
from simclr_mura import checkpoints
from simclr_mura import data as data_lib
from simclr_mura import main
from simclr_mura import probe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(num_studies: int, signal: float, seed: int) -> pd.DataFrame:
    """Two images per study; features = signal x label + noise in 16 dimensions."""
    rng = np.random.default_rng(seed)
    rows = []
    for study in range(num_studies):
        label = study % 2
        for view in range(2):
            rows.append({'image_id': f's{seed}_{study}_{view}', 'study_id': f's{seed}_{study}',
                         'body_part': 'elbow', 'label': label,
                         'features': rng.normal(size=16) + signal * label})
    return pd.DataFrame(rows)


def test_score_separates_informative_from_uninformative_features():
    informative = probe.score(_images(40, 2.0, 0), _images(30, 2.0, 1), num_resamples=200)
    noise = probe.score(_images(40, 0.0, 0), _images(30, 0.0, 1), num_resamples=200)
    assert informative['study_auroc'] > 0.95
    assert abs(noise['study_auroc'] - 0.5) < 0.25
    low, high = informative['study_auroc_ci']
    assert low <= informative['study_auroc'] <= high
    assert informative['num_train_images'] == 80 and informative['num_train_studies'] == 40
    assert informative['C'] in probe.C_GRID


def test_one_class_training_split_is_a_clear_error():
    one_class = _images(10, 1.0, 0)
    one_class['label'] = 1
    with pytest.raises(ValueError, match='one class'):
        probe.fit_classifier(np.stack(one_class['features']), one_class['label'].to_numpy(),
                             one_class['study_id'].to_numpy())


def test_probe_of_the_tiny_pretraining_run(tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    run_dir, _ = tiny_runs.pretrain_dir(base)
    builder = data_lib.make_builder(tiny_mura.DATASET, tiny_mura.build(base))
    arch = probe.architecture_of(run_dir, {})
    assert (arch.resnet_depth, arch.image_size) == (18, 64)  # from the run's flags.json

    result = probe.probe(run_dir, builder, arch=arch, train_splits=('train',),
                         eval_split='validation', seeds=(0, 1), num_resamples=50)
    rows = pd.DataFrame(result['rows'])
    assert sorted(zip(rows['encoder'], rows['seed'].fillna(-1))) == [
        ('pretrained', -1), ('random', 0), ('random', 1)]
    assert (rows['num_train_images'] == data_lib.num_examples(builder, 'train')).all()
    assert result['checkpoint'] == tf.train.latest_checkpoint(run_dir)

    # The pretrained features are the checkpoint's encoder output on the centre crop.
    model = probe.build_encoder(arch)
    checkpoints.initialize_from_checkpoint(model, run_dir, False, arch.describe())
    table = probe.extract_features(model, builder, 'validation', arch.image_size, batch_size=4)
    assert len(table) == data_lib.num_examples(builder, 'validation')
    assert table['image_id'].is_unique
    first = next(iter(data_lib.build_input_fn(builder, 'validation', 4, is_training=False,
                                              is_pretrain=False, image_size=64)(
        tf.distribute.InputContext())))
    direct = model.named_outputs(first[0], training=False)['final_avg_pool'].numpy()
    keys = first[1]['key'].numpy()
    by_key = dict(zip(table['key'], table['features']))
    np.testing.assert_allclose(np.stack([by_key[k] for k in keys]), direct, rtol=1e-5, atol=1e-6)

    # A random encoder of the same seed gives the same features; another seed does not.
    def random_features(seed):
        tf_keras.utils.set_random_seed(seed)
        return np.stack(probe.extract_features(probe.build_encoder(arch), builder, 'validation',
                                               64, batch_size=4)['features'])
    np.testing.assert_array_equal(random_features(3), random_features(3))
    assert not np.allclose(random_features(3), random_features(4))


@pytest.mark.slow
def test_a_run_that_only_trained_tells_the_probe_its_architecture(tmp_path_factory, tmp_path):
    base = str(tmp_path_factory.getbasetemp())
    data_dir = tiny_mura.build(os.path.join(base, 'tiny_mura'))
    model_dir = str(tmp_path / 'train_only')
    config = tiny_runs.base_config(data_dir, model_dir, mode='train', train_mode='pretrain',
                                   image_size=32, train_steps=1, checkpoint_steps=1)
    main.run(config, strategy=tiny_runs.strategy(1))
    assert not os.path.exists(os.path.join(model_dir, 'result.json'))  # no evaluation ran
    arch = probe.architecture_of(model_dir, {})
    assert (arch.resnet_depth, arch.image_size) == (18, 32)  # not the flags' ResNet-50 at 224
    model = probe.build_encoder(arch)
    checkpoints.initialize_from_checkpoint(model, model_dir, False, arch.describe())


def test_cli_writes_probe_json_and_rejects_a_bad_checkpoint(tmp_path_factory, tmp_path):
    base = str(tmp_path_factory.getbasetemp())
    run_dir, _ = tiny_runs.pretrain_dir(base)
    data_dir = tiny_mura.build(base)
    command = [sys.executable, '-m', 'simclr_mura.probe', f'--checkpoint={run_dir}',
               f'--data_dir={data_dir}', f'--dataset={tiny_mura.DATASET}', '--train_splits=train',
               '--eval_split=validation', '--seeds=0', '--bootstrap_resamples=20',
               f'--out={tmp_path}']
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads((tmp_path / probe.RESULT_FILE).read_text())
    assert {r['encoder'] for r in written['rows']} == {'pretrained', 'random'}
    assert 'pretrained' in done.stdout

    bad = subprocess.run([*command[:3], f'--checkpoint={tmp_path}', *command[4:]], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    errors = [line for line in bad.stderr.splitlines() if line.startswith('probe: error')]
    assert len(errors) == 1 and 'No checkpoint found' in errors[0]

    wrong = subprocess.run([*command, '--resnet_depth=34'], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert wrong.returncode == 2 and 'does not match the model' in wrong.stderr
