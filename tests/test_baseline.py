"""Tests for simclr_mura.densenet and recipes.baseline: the DenseNet-169 baseline's loss, augmentation, initial weights,
plateau decay, and a tiny end-to-end run (train -> resume -> eval -> export -> serve PNG bytes)."""
import json
import math
import os

import h5py
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tf_keras
import tensorflow_datasets as tfds

import tiny_mura
import tiny_runs
from simclr_mura import data
from simclr_mura import densenet as baseline
from simclr_mura import main
from simclr_mura import recipes
from simclr_mura import train
from simclr_mura.config import Config, ConfigError

SIZE = tiny_runs.BASELINE_SIZE


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _hand_bce(labels, weights, logits):
    """The MURA paper's loss written out: -w1 y log p - w0 (1 - y) log(1 - p), mean over the batch."""
    p = _sigmoid(np.asarray(logits, np.float64))
    y = np.asarray(labels, np.float64)
    return float(np.mean(-np.asarray(weights) * (y * np.log(p) + (1 - y) * np.log(1 - p))))


@pytest.fixture(scope='module')
def model():
    return baseline.build_model(SIZE)


# ----------------------------------------------------------------------------- loss

def test_weighted_bce_equals_the_hand_computation():
    labels = np.array([1, 0, 1, 0])
    # Elbow weights of the paper (w_abnormal 0.593, w_normal 0.407), per example by its label.
    weights = np.where(labels == 1, 2925 / 4931, 2006 / 4931).astype(np.float32)
    logits = np.array([[2.0], [-0.5], [-1.0], [3.0]], np.float32)
    loss = baseline.weighted_bce(tf.one_hot(labels, 2), tf.constant(weights), tf.constant(logits))
    assert float(loss) == pytest.approx(_hand_bce(labels, weights, logits[:, 0]), rel=1e-6)
    # Rows 0 (abnormal, logit > 0) and 1 (normal, logit < 0) are right, 2 and 3 wrong.
    assert float(baseline.binary_accuracy(tf.one_hot(labels, 2), tf.constant(logits))) == 0.5


def test_training_step_loss_is_the_weighted_bce_of_the_model_logits(model):
    config = Config(train_mode='baseline', optimizer='adam', image_size=SIZE, weight_decay=1e-3)
    compute = train._make_compute_step(recipes.for_config(config), model,
                                       tf_keras.optimizers.Adam(1e-4), tf.distribute.get_strategy(),
                                       jit_compile=False)
    images = tf.random.stateless_uniform([3, SIZE, SIZE, 3], seed=[1, 2])
    labels = np.array([1, 0, 1])
    weights = np.array([0.7, 0.3, 0.7], np.float32)
    targets = {'label': tf.one_hot(labels, 2), 'weight': tf.constant(weights)}
    _, stats = compute(images, targets)
    # Training-mode batch norm uses the batch statistics, so the logits do not depend on the call.
    logits = model(images, training=True)[1].numpy()[:, 0]
    assert float(stats['train/supervised_loss']) == pytest.approx(_hand_bce(labels, weights, logits),
                                                                  rel=1e-5)
    # Weight decay on every weight except batch-norm scales/offsets (Keras names them *_bn/... or bn/...).
    decayed = [v for v in model.trainable_variables if not v.name.split('/')[-2].endswith('bn')]
    assert len(decayed) < len(model.trainable_variables)
    expected = 1e-3 * sum(float(np.sum(v.numpy().astype(np.float64) ** 2)) / 2 for v in decayed)
    assert float(stats['train/weight_decay']) == pytest.approx(expected, rel=1e-4)


def test_validation_loss_of_predictions_by_hand():
    predictions = pd.DataFrame({'body_part': ['elbow', 'hand', 'hand'], 'label': [1, 0, 1],
                                'probability': [0.8, 0.4, 1.0]})
    names = ['elbow', 'finger', 'hand']
    weights = np.array([[0.4, 0.6], [1, 1], [0.25, 0.75]])
    eps = 1e-7
    expected = np.mean([-0.6 * math.log(0.8), -0.25 * math.log(0.6), -0.75 * math.log(1 - eps)])
    assert baseline.validation_loss(predictions, weights, names) == pytest.approx(expected, rel=1e-9)
    unweighted = np.mean([-math.log(0.8), -math.log(0.6), -math.log(1 - eps)])
    assert baseline.validation_loss(predictions, None, names) == pytest.approx(unweighted, rel=1e-9)


def test_plateau_decays_by_ten_when_the_loss_does_not_improve():
    state = baseline.PlateauState()
    rate = baseline.ConstantLearningRate(1e-4, state)
    decisions = [state.update(loss) for loss in (0.9, 0.8, 0.8, 0.85, 0.7, 0.71)]
    assert decisions == [False, False, True, True, False, True]
    assert float(state.best_loss.numpy()) == pytest.approx(0.7)
    assert int(state.num_decays.numpy()) == 3
    assert float(rate(123)) == pytest.approx(1e-7)
    assert float(baseline.ConstantLearningRate(2e-5)(10**6)) == pytest.approx(2e-5)


# ----------------------------------------------------------------------------- augmentation

def _radiograph(height=50, width=40):
    rng = np.random.default_rng(3)
    return tf.constant(rng.integers(0, 256, size=(height, width, 1)), tf.uint8)


def test_rotation_by_a_quarter_turn_is_rot90_and_zero_is_identity():
    image = np.random.default_rng(0).uniform(size=(7, 7, 1)).astype(np.float32)
    quarter = baseline.rotate(tf.constant(image), tf.constant(math.pi / 2)).numpy()
    np.testing.assert_allclose(quarter, np.rot90(image, 1), atol=1e-5)  # counter-clockwise
    np.testing.assert_array_equal(baseline.rotate(tf.constant(image), tf.constant(0.)).numpy(), image)
    # A small rotation leaves black (zero) corners on a white image, and keeps the centre.
    white = baseline.rotate(tf.ones([33, 33, 1]), tf.constant(math.radians(30))).numpy()
    assert white[0, 0, 0] == 0 and white[16, 16, 0] == pytest.approx(1.0)


def test_training_augmentation_keeps_shape_and_range_and_flips_or_rotates():
    image = _radiograph()
    plain = tf.tile(baseline.resize(tf.image.convert_image_dtype(image, tf.float32), 48), [1, 1, 3])
    flipped = tf.image.flip_left_right(plain)
    outputs = []
    for i in range(8):
        out = baseline.preprocess_image(image, image_size=48, is_training=True, rotation_degrees=30,
                                        seed=tf.constant([i, 7]))
        assert out.shape == (48, 48, 3) and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 1
        np.testing.assert_array_equal(out[..., 0], out[..., 2])  # grey stays grey
        outputs.append(out.numpy())
    # Rotated: never exactly the plain or the flipped resize; seeds give different views.
    for out in outputs:
        assert not np.allclose(out, plain, atol=1e-3) and not np.allclose(out, flipped, atol=1e-3)
    assert len({o.tobytes() for o in outputs}) == len(outputs)
    # Without rotation, only the flip remains: each view is the plain or the flipped resize.
    no_rotation = [baseline.preprocess_image(image, image_size=48, is_training=True, rotation_degrees=0,
                                             seed=tf.constant([i, 7])).numpy() for i in range(8)]
    kinds = {0 if np.allclose(v, plain, atol=1e-6) else 1 if np.allclose(v, flipped, atol=1e-6) else 2
             for v in no_rotation}
    assert kinds == {0, 1}


def test_eval_preprocessing_is_only_a_resize():
    image = _radiograph()
    out = baseline.preprocess_image(image, image_size=48, is_training=False, rotation_degrees=30)
    expected = tf.image.resize(tf.cast(image, tf.float32) / 255., [48, 48], antialias=True)
    np.testing.assert_allclose(out.numpy(), np.repeat(expected.numpy(), 3, axis=-1), atol=1e-6)


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
    data_dir = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    builder = data.make_builder(tiny_mura.DATASET, data_dir)
    data.ensure_prepared(builder)
    return builder


def test_input_pipeline_uses_the_baseline_preprocessing(builder):
    preprocess = baseline.preprocess_fn(SIZE, 30.0)
    input_fn = data.build_input_fn(builder, 'test', 4, is_training=False, is_pretrain=False,
                                   image_size=SIZE, preprocess_fn=preprocess)
    first = [b[0].numpy() for b in input_fn(tf.distribute.InputContext())]
    second = [b[0].numpy() for b in input_fn(tf.distribute.InputContext())]
    raw = [x['image'] for x in builder.as_dataset(split='test', shuffle_files=False)]
    eval_images = np.concatenate(first)[:len(raw)]
    np.testing.assert_array_equal(eval_images, np.concatenate(second)[:len(raw)])  # no randomness
    for got, image in zip(eval_images, raw):
        np.testing.assert_allclose(got, preprocess(image, is_training=False).numpy(), atol=1e-6)
    train_fn = data.build_input_fn(builder, 'train', 4, is_training=True, is_pretrain=False,
                                   image_size=SIZE, preprocess_fn=preprocess)
    images, targets = next(iter(train_fn(tf.distribute.InputContext())))
    assert images.shape == (4, SIZE, SIZE, 3) and targets['label'].shape == (4, 2)
    assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1
    with pytest.raises(ValueError, match='pretraining uses'):
        data.build_input_fn(builder, 'train', 4, is_training=True, is_pretrain=True, image_size=SIZE,
                            preprocess_fn=preprocess)


# ----------------------------------------------------------------------------- initial weights

def test_imagenet_weights_without_internet_give_one_clear_error(builder, tmp_path_factory, tmp_path,
                                                                monkeypatch):
    # An empty Keras cache and a proxy that refuses connections make the download fail at once.
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    for name in ('https_proxy', 'HTTPS_PROXY', 'http_proxy', 'HTTP_PROXY'):
        monkeypatch.setenv(name, 'http://127.0.0.1:9')
    for name in ('no_proxy', 'NO_PROXY'):
        monkeypatch.delenv(name, raising=False)
    data_dir = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    config = tiny_runs.base_config(data_dir, str(tmp_path / 'run'), train_mode='baseline',
                                   optimizer='adam', image_size=SIZE, train_batch_size=2,
                                   train_steps=1, baseline_weights='imagenet')
    with pytest.raises(ConfigError) as info:
        main.run(config, strategy=tiny_runs.strategy(1))
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith('--baseline_weights=imagenet: the Keras ImageNet weights of DenseNet-169 '
                              'could not be downloaded')
    assert baseline.IMAGENET_WEIGHTS_URL in message and '--baseline_weights=none' in message
    assert not os.path.exists(os.path.join(config.model_dir, 'checkpoint'))  # nothing trained


def test_weights_file_path_loads_and_a_wrong_file_is_refused(model, tmp_path):
    path = str(tmp_path / 'backbone.h5')
    model.backbone.save_weights(path)
    other = baseline.build_model(SIZE)
    baseline.initialize_weights(other, path)
    for a, b in zip(model.backbone.weights, other.backbone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    small = tf_keras.Sequential([tf_keras.layers.Dense(3, input_shape=(4,))])
    wrong = str(tmp_path / 'other.h5')
    small.save_weights(wrong)
    assert h5py.is_hdf5(wrong)
    with pytest.raises(ConfigError, match=r'other\.h5 does not fit the DenseNet-169 backbone'):
        baseline.initialize_weights(other, wrong)
    with pytest.raises(ConfigError, match='no such file, directory or checkpoint'):
        baseline.initialize_weights(other, str(tmp_path / 'missing.h5'))


def test_class_weights_are_applied_per_example_by_body_part():
    weights = np.arange(14, dtype=np.float32).reshape(7, 2) / 10  # [part, label]
    features = {'image': tf.zeros([20, 20, 1], tf.uint8), 'label': tf.constant(1, tf.int64),
                'body_part': tf.constant(5, tf.int64), 'image_id': tf.constant('x')}
    _, targets = data._map_fn(features, image_size=SIZE, is_training=False, is_pretrain=False,
                              color_jitter_strength=0., class_weights=weights,
                              preprocess_fn=baseline.preprocess_fn(SIZE, 30.0))
    assert float(targets['weight']) == pytest.approx(weights[5, 1])


# ----------------------------------------------------------------------------- end to end

STEPS_FIRST, STEPS_TOTAL = tiny_runs.BASELINE_STEPS_FIRST, tiny_runs.BASELINE_STEPS_TOTAL
EPOCH_STEPS = 3  # train_1pct has 6 images, batch 2.


def _steps(model_dir):
    return sorted(int(f[len('ckpt-'):-len('.index')]) for f in os.listdir(model_dir)
                  if f.startswith('ckpt-') and f.endswith('.index'))


def _scalars(model_dir):
    from tensorflow.core.util import event_pb2
    values = {}
    for name in os.listdir(model_dir):
        if name.startswith('events.out.tfevents'):
            for record in tf.data.TFRecordDataset(os.path.join(model_dir, name)):
                event = event_pb2.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if value.HasField('tensor') and value.tensor.dtype == tf.float32.as_datatype_enum:
                        values[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    return values


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """A baseline run killed after 4 steps (mode=train) and resumed to 7 (train_then_eval)."""
    return tiny_runs.baseline_runs(str(tmp_path_factory.getbasetemp()))


@pytest.mark.slow
def test_end_to_end_checkpoints_resume_and_plateau(runs):
    model_dir = runs['model_dir']
    assert runs['first'].final_step == STEPS_FIRST and runs['second'].final_step == STEPS_TOTAL
    # Loops end at checkpoint_steps multiples and at epoch ends (3, 6), for the plateau check.
    assert runs['after_first'] == [2, 3, 4]
    assert _steps(model_dir) == [2, 3, 4, 6, 7]
    scalars = _scalars(model_dir)
    loss3, loss6 = scalars[('baseline/validation_loss', 3)], scalars[('baseline/validation_loss', 6)]
    assert ('baseline/validation_loss', 4) not in scalars
    # The resumed run compared epoch 2 with the best loss of the first run (restored state).
    state = tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-6'))
    best = state.get_tensor('plateau/best_loss/.ATTRIBUTES/VARIABLE_VALUE')
    scale = state.get_tensor('plateau/scale/.ATTRIBUTES/VARIABLE_VALUE')
    assert best == pytest.approx(min(loss3, loss6), rel=1e-6)
    assert scale == pytest.approx(1.0 if loss6 < loss3 else 0.1)
    assert scalars[('learning_rate', 6)] == pytest.approx(1e-3 * scale, rel=1e-6)
    assert scalars[('learning_rate', 2)] == pytest.approx(1e-3, rel=1e-6)  # constant, no warm-up
    for tag in ('train/supervised_loss', 'train/supervised_acc', 'train/total_loss'):
        assert (tag, 7) in scalars
    # Only the baseline's variables (and Adam's slots) are in the checkpoint, no SimCLR heads.
    keys = tf.train.load_checkpoint(os.path.join(model_dir, 'ckpt-7')).get_variable_to_shape_map()
    assert any(k.startswith('model/backbone/') for k in keys)
    assert keys['model/supervised_head/kernel/.ATTRIBUTES/VARIABLE_VALUE'] == [1664, 1]
    assert not any('resnet_model' in k or 'projection_head' in k for k in keys)


@pytest.mark.slow
def test_end_to_end_evaluation_and_class_weights(runs, builder):
    model_dir = runs['model_dir']
    with open(os.path.join(model_dir, 'result.json')) as f:
        result = json.load(f)
    assert result['global_step'] == STEPS_TOTAL and result['eval_split'] == 'test'
    for level in ('image', 'study'):
        for group in ('overall', 'elbow'):
            for metric in ('accuracy', 'kappa', 'auroc', 'precision', 'recall'):
                assert f'eval/{level}/{group}/{metric}' in result
    predictions = pd.read_csv(os.path.join(model_dir, f'predictions_test_{STEPS_TOTAL}.csv'))
    assert len(predictions) == data.num_examples(builder, 'test')
    assert predictions['probability'].between(0, 1).all()
    assert result['eval/image/overall/accuracy'] == pytest.approx(
        ((predictions['probability'] > 0.5) == predictions['label']).mean())
    # The weights in use come from the image counts of the training split, abnormal <- normal share.
    labels = [int(x['label']) for x in builder.as_dataset(split='train_1pct', decoders={
        'image': tfds.decode.SkipDecoding()})]
    normal, abnormal = labels.count(0), labels.count(1)
    assert result['class_weighting'] == 'mura' and result['class_weights_split'] == 'train_1pct'
    assert result['class_weights'] == {'elbow': {
        'normal_images': normal, 'abnormal_images': abnormal,
        'w_abnormal': pytest.approx(normal / (normal + abnormal)),
        'w_normal': pytest.approx(abnormal / (normal + abnormal))}}
    with open(os.path.join(model_dir, 'flags.json')) as f:
        assert json.load(f)['train_mode'] == 'baseline'


@pytest.mark.slow
def test_export_serves_png_bytes_like_the_eval(runs):
    model_dir = runs['model_dir']
    export_path = runs['second'].export_path
    assert export_path == os.path.join(model_dir, 'saved_model', str(STEPS_TOTAL))
    loaded = tf.saved_model.load(export_path)
    predictions = pd.read_csv(os.path.join(model_dir, f'predictions_test_{STEPS_TOTAL}.csv'))
    manual = os.path.join(runs['base'], 'tiny_mura', 'manual', 'MURA-v1.1')
    pngs = [tf.io.read_file(os.path.join(manual, image_id)) for image_id in predictions['image_id']]
    served = loaded.signatures['serving_default'](image_bytes=tf.stack(pngs))
    np.testing.assert_allclose(served['probability'].numpy(), predictions['probability'], atol=2e-5)
    assert served['logits_sup'].shape == (len(pngs), 1)
    np.testing.assert_allclose(served['probability'], _sigmoid(served['logits_sup'].numpy()[:, 0]),
                               atol=1e-6)
    outputs = loaded(tf.zeros([2, SIZE, SIZE, 3]), False)
    assert sorted(outputs) == ['final_avg_pool', 'logits_sup']
    assert outputs['final_avg_pool'].shape == (2, 1664) and outputs['logits_sup'].shape == (2, 1)
    # The export is also a checkpoint the baseline can start from.
    fresh = baseline.build_model(SIZE)
    baseline.initialize_weights(fresh, export_path)
    np.testing.assert_allclose(fresh(tf.zeros([1, SIZE, SIZE, 3]))[1].numpy(),
                               outputs['logits_sup'].numpy()[:1], atol=1e-5)
