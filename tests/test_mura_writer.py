"""Tests for tfds_mura.mura.mura_writer: the direct example encoding and the threaded shard writer.

The end-to-end check (a whole build with `mura_writer` against one with TFDS's shard writer) is
test_mura_builder.py::test_mura_writer_writes_the_same_files_as_tfds_writer.
"""
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfds_mura.mura import mura_writer

FEATURES = tfds.features.FeaturesDict({
    'image': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
    'label': tfds.features.ClassLabel(names=['normal', 'abnormal']),
    'name': tfds.features.Text(),
    'count': tfds.features.Scalar(dtype=np.int64),
    'index': tfds.features.Scalar(dtype=np.int32),
})
INT64_EDGES = [0, 1, 127, 128, 300, 2**31 - 1, 2**31, 2**63 - 1, -1, -2**31, -2**63]


def _example(count, index=3, name='patient00011', image=b'\x89PNG fake bytes' * 40):
    example = {'image': image, 'label': 'abnormal', 'name': name, 'count': count, 'index': index}
    values = {'image': image, 'label': 1, 'name': name.encode('utf-8'), 'count': count, 'index': index}
    return example, values


def _tfds_bytes(example):
    serializer = tfds.core.example_serializer.ExampleSerializer(FEATURES.get_serialized_info())
    return serializer.serialize_example(FEATURES.encode_example(example))


def test_direct_encoding_equals_tfds_bytes_for_int64_edges_and_long_values():
    encoder = mura_writer.ExampleEncoder(FEATURES, *_example(5))
    assert encoder.exact
    for count in INT64_EDGES:
        # A string and an image long enough for multi-byte length prefixes, and non-ASCII text.
        example, values = _example(count, index=-7, name='patiënt' * 30, image=bytes(range(256)) * 700)
        assert encoder.encode(example, values) == _tfds_bytes(example)
        parsed = tf.train.Example.FromString(encoder.encode(example, values)).features.feature
        assert parsed['count'].int64_list.value == [count]
        assert parsed['image'].bytes_list.value == [values['image']]


def test_a_probe_that_does_not_match_falls_back_to_tfds_serialization():
    example, values = _example(5)
    encoder = mura_writer.ExampleEncoder(FEATURES, example, dict(values, label=0))  # wrong class index
    assert not encoder.exact
    other, other_values = _example(9)
    assert encoder.encode(other, dict(other_values, label=0)) == _tfds_bytes(other)


def test_non_scalar_features_are_refused():
    features = tfds.features.FeaturesDict({'vector': tfds.features.Tensor(shape=(3,), dtype=np.int64)})
    with pytest.raises(ValueError, match='vector'):
        mura_writer.ExampleEncoder(features, {'vector': [1, 2, 3]}, {'vector': 0})


def test_shards_are_the_same_with_any_number_of_threads(tmp_path):
    items = [list(range(start, start + 25)) for start in range(0, 100, 25)]

    def serialize(i):
        return f'record {i}'.encode() * (i % 7 + 1)

    contents = []
    for threads in (1, 3):
        jobs = [mura_writer.ShardJob(str(tmp_path / f'{threads}-{n}.tfrecord'), shard) for n, shard in enumerate(items)]
        sizes = mura_writer.write_shards(jobs, serialize, threads=threads)
        assert sizes == [os.path.getsize(job.path) for job in jobs]
        contents.append([open(job.path, 'rb').read() for job in jobs])
        records = [r.numpy() for r in tf.data.TFRecordDataset([job.path for job in jobs])]
        assert records == [serialize(i) for i in range(100)]
    assert contents[0] == contents[1]
