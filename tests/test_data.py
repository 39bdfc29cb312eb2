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
    """MURA-v1.1 training image counts (docs/mura.md 2.3) give the paper's weights (3): the abnormal
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


def _keys_of(dataset, batches):
    return [int(k) for _, targets in dataset.take(batches) for k in targets['key'].numpy()]


@pytest.mark.parametrize('pipelines', [2, 3])
def test_training_pipelines_read_disjoint_parts_of_a_one_file_split(builder, pipelines):
    # The tiny train split is one file: fewer files than pipelines, so TFDS file sharding would
    # fail ("Cannot shard the pipeline"); each pipeline reads its own subsplit instead.
    assert len(builder.info.splits['train'].file_instructions) == 1
    index = data.split_index(builder, 'train')
    input_fn = data.build_input_fn(builder, 'train', pipelines, is_training=True, is_pretrain=False,
                                   image_size=32, deterministic=True, seed=3)
    seen = []
    for pipeline_id in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline_id, pipelines)
        _, sharding, count = data.pipeline_split(builder, 'train', context, by_files_if_possible=True)
        assert sharding == data.EXAMPLE_SHARDING
        assert context.get_per_replica_batch_size(pipelines) == 1  # The original's batch split.
        dataset = input_fn(context)
        epoch = _keys_of(dataset, count)
        assert len(set(epoch)) == count  # one epoch of this pipeline: each of its examples once
        # The next epoch is the same examples again (reshuffled), nothing of the other pipelines.
        assert set(_keys_of(dataset, 2 * count)[count:]) == set(epoch)
        seen.extend(epoch)
    # Every training example in exactly one pipeline.
    assert sorted(seen) == sorted(index['key'].tolist())


def test_one_pipeline_reads_the_whole_split(builder):
    split, sharding, count = data.pipeline_split(builder, 'train', tf.distribute.InputContext(),
                                                 by_files_if_possible=True)
    assert (split, sharding, count) == ('train', None, 38)


def test_eval_pipelines_shard_and_pad_to_the_same_steps(builder):
    # 11 validation images over 3 pipelines: parts of 4, 4 and 3, each padded to 2 batches of 2.
    index = data.split_index(builder, 'validation')
    input_fn = data.build_input_fn(builder, 'validation', 6, is_training=False, is_pretrain=False,
                                   image_size=64)
    keys, steps = [], []
    for pipeline_id in range(3):
        batches = list(input_fn(tf.distribute.InputContext(3, pipeline_id, 3)))
        steps.append(len(batches))
        for images, targets in batches:
            assert images.shape == (2, 64, 64, 1)  # full, fixed-shape batches only
            keys.extend(int(k) for k in targets['key'].numpy())
    assert steps == [2, 2, 2]
    real = [k for k in keys if k != data.PADDING_KEY]
    assert sorted(real) == sorted(index['key'].tolist()) and len(keys) - len(real) == 1


def test_more_eval_pipelines_than_images(builder):
    # 4 test images over 6 pipelines: two pipelines read nothing and send one padding batch.
    input_fn = data.build_input_fn(builder, 'test', 6, is_training=False, is_pretrain=False,
                                   image_size=64)
    keys = []
    for pipeline_id in range(6):
        batches = list(input_fn(tf.distribute.InputContext(6, pipeline_id, 6)))
        assert len(batches) == 1
        keys.extend(int(k) for _, targets in batches for k in targets['key'].numpy())
    assert sorted(k for k in keys if k != data.PADDING_KEY) == sorted(
        data.split_index(builder, 'test')['key'].tolist())


def test_fewer_training_examples_than_pipelines_is_an_error(builder):
    input_fn = data.build_input_fn(builder, 'train_1pct', 8, is_training=True, is_pretrain=False,
                                   image_size=64)
    with pytest.raises(ValueError, match='fewer than the 8 input pipelines'):
        input_fn(tf.distribute.InputContext(8, 7, 8))


@pytest.mark.parametrize('is_training', [True, False])
def test_batches_have_static_shapes(builder, is_training):
    # TPUs compile for fixed shapes: the batch dimension is known before the first batch is read.
    input_fn = data.build_input_fn(builder, 'validation', 4, is_training=is_training,
                                   is_pretrain=False, image_size=64)
    images, targets = input_fn(tf.distribute.InputContext(2, 1, 2)).element_spec
    assert images.shape.as_list() == [2, 64, 64, 1]
    assert all(spec.shape[0] == 2 for spec in targets.values())
