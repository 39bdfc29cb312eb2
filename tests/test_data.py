"""Tests for simclr_mura.data on a tiny synthetic mura/elbow dataset."""
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tiny_mura
from simclr_mura import data


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
    data_dir = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    builder = data.make_builder(tiny_mura.DATASET, data_dir)
    data.ensure_prepared(builder)
    return builder


def _two_cpus():
    if len(tf.config.list_logical_devices('CPU')) < 2:
        pytest.skip('needs the 2 logical CPUs of tests/conftest.py')
    return tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])


def _local(strategy, value):
    return [v.numpy() for v in strategy.experimental_local_results(value)]


def test_not_built_dataset_message(tmp_path):
    with pytest.raises(data.DatasetNotBuiltError) as info:
        data.ensure_prepared(data.make_builder('mura/all', str(tmp_path)))
    message = str(info.value)
    assert 'mura/all is not built in' in message
    assert 'python -m tfds_mura.build' in message and 'bash run.sh demo' in message
    with pytest.raises(data.DatasetNotBuiltError, match='--dataset=mura/kneecap'):
        data.make_builder('mura/kneecap', str(tmp_path))


def test_pretrain_pipeline_two_replicas(builder):
    strategy = _two_cpus()
    input_fn = data.build_input_fn(builder, 'train', 8, is_training=True, is_pretrain=True,
                                   image_size=64, color_jitter_strength=1.0)
    images, targets = next(iter(data.build_distributed_dataset(input_fn, strategy)))
    for replica_images, replica_labels in zip(_local(strategy, images), _local(strategy, targets['label'])):
        # Per-replica batch, two grey views on channels, left 1-channel for the model to tile.
        assert replica_images.shape == (4, 64, 64, 2)
        assert replica_images.min() >= 0 and replica_images.max() <= 1
        assert replica_labels.shape == (4, 2) and np.all(replica_labels.sum(1) == 1)
    # The two views of one image are different augmentations.
    first = _local(strategy, images)[0][0]
    assert not np.allclose(first[..., 0], first[..., 1])


def test_finetune_training_view_stays_grey(builder):
    input_fn = data.build_input_fn(builder, 'train_1pct', 4, is_training=True, is_pretrain=False,
                                   image_size=64)
    images, targets = next(iter(input_fn(tf.distribute.InputContext())))
    # One 1-channel view (the model tiles it); no colour jitter when fine-tuning.
    assert images.shape == (4, 64, 64, 1) and images.dtype == tf.float32
    assert np.min(images) >= 0 and np.max(images) <= 1 and np.ptp(images.numpy()) > 0
    np.testing.assert_array_equal(targets['weight'], np.ones(4))


def test_eval_pipeline_sees_every_image_once(builder):
    strategy = _two_cpus()
    n = data.num_examples(builder, 'validation')
    input_fn = data.build_input_fn(builder, 'validation', 4, is_training=False, is_pretrain=False,
                                   image_size=64)
    keys, labels, weights, pixels = [], [], [], []
    for images, targets in data.build_distributed_dataset(input_fn, strategy):
        for k, lab, w, img in zip(_local(strategy, targets['key']), _local(strategy, targets['label']),
                                  _local(strategy, targets['weight']), _local(strategy, images)):
            keys.extend(k)
            labels.extend(lab.argmax(1))
            weights.extend(w)
            pixels.extend(img)
            assert img.shape == (2, 64, 64, 1)  # every replica gets a full batch of grey views
    # 11 images plus one padding example completing the last global batch of 4.
    assert n == 11 and len(keys) == 12
    padding = [i for i, k in enumerate(keys) if k == data.PADDING_KEY]
    assert padding == [11] and weights[11] == 0 and not pixels[11].any()
    assert all(pixels[i].any() for i in range(11))
    keys, labels = keys[:11], labels[:11]
    table = data.split_index(builder, 'validation').set_index('key')
    assert sorted(keys) == sorted(table.index)
    assert [table.loc[k, 'label'] for k in keys] == labels
    assert set(table['body_part']) == {'elbow'}
    assert table['image_id'].str.contains('XR_ELBOW/').all()


def test_mura_class_weights(builder):
    weights = data.mura_class_weight_table(builder, 'train').weights
    table = data.split_index(builder, 'train')
    abnormal, total = table['label'].sum(), len(table)
    elbow = builder.info.features['body_part'].names.index('elbow')
    # Abnormal images are weighted by the normal fraction, normal ones by the abnormal fraction.
    np.testing.assert_allclose(weights[elbow], [abnormal / total, (total - abnormal) / total], rtol=1e-6)
    hand = builder.info.features['body_part'].names.index('hand')
    np.testing.assert_array_equal(weights[hand], [1, 1])
    input_fn = data.build_input_fn(builder, 'train', 8, is_training=True, is_pretrain=False,
                                   image_size=64, class_weights=weights)
    _, targets = next(iter(input_fn(tf.distribute.InputContext())))
    expected = weights[elbow][targets['label'].numpy().argmax(1)]
    np.testing.assert_allclose(targets['weight'], expected)


def test_class_weights_pinned_to_the_mura_paper():
    """MURA-v1.1 training image counts (mura_facts.md 3.3) give the paper's weights (6): the abnormal
    class is weighted by the normal fraction. Pinned so that they can never be swapped again."""
    names = ('elbow', 'finger', 'hand', 'shoulder')
    table = pd.DataFrame({'body_part': ['elbow'] * 4931 + ['hand'] * 5543 + ['shoulder'] * 8379,
                          'label': [0] * 2925 + [1] * 2006 + [0] * 4059 + [1] * 1484
                                   + [0] * 4211 + [1] * 4168})
    counts = data.count_images(table.sample(frac=1, random_state=0), names)
    np.testing.assert_array_equal(counts, [[2925, 2006], [0, 0], [4059, 1484], [4211, 4168]])
    weights = data.class_weights_from_counts(counts)
    np.testing.assert_allclose(weights[[0, 2, 3], 1], [0.593, 0.732, 0.503], atol=5e-4)  # abnormal
    np.testing.assert_allclose(weights[[0, 2, 3], 0], [0.407, 0.268, 0.497], atol=5e-4)  # normal
    np.testing.assert_array_equal(weights[1], [1, 1])  # no finger images: unweighted
    # One class only: the paper's formula would zero it out; it is weighted as a balanced part.
    np.testing.assert_array_equal(data.class_weights_from_counts([[5, 0], [0, 2]]), [[0.5, 0.5]] * 2)
    info = data.ClassWeights('train', names, counts, weights).as_dict()
    assert list(info) == ['elbow', 'hand', 'shoulder']
    assert info['elbow'] == {'normal_images': 2925, 'abnormal_images': 2006,
                             'w_normal': pytest.approx(2006 / 4931), 'w_abnormal': pytest.approx(2925 / 4931)}


def test_deterministic_resume_skips_consumed_examples(builder):
    def keys(resume_step, batches):
        input_fn = data.build_input_fn(builder, 'train', 4, is_training=True, is_pretrain=False,
                                       image_size=64, deterministic=True, seed=5,
                                       resume_step=resume_step)
        it = iter(input_fn(tf.distribute.InputContext()))
        return [next(it)[1]['key'].numpy().tolist() for _ in range(batches)]
    uninterrupted = keys(0, 5)
    assert keys(3, 2) == uninterrupted[3:]
    assert keys(0, 5) == uninterrupted  # the seeded stream is reproducible
