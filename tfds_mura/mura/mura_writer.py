"""Writes the `mura` shards directly, the same bytes as TFDS's shard writer, on several threads.

TFDS's writer passes every example through the FeatureConnectors and builds a
``tf.train.Example`` protobuf for it: about 70 µs of Python per example, on one thread, which
is more than reading, checking and writing the image together. A `mura` example is seven
scalars (the PNG bytes, three strings, three integers), so `ExampleEncoder` writes its
protobuf wire format directly: each feature is a map entry ``{key, Feature}`` holding a
one-element ``BytesList`` or packed ``Int64List``. The protobuf runtime writes map entries in
an order of its own (not the insertion order), so the encoder reads that order once from an
example TFDS serialized and then only verifies it: the records equal TFDS's byte for byte, or
the build falls back to TFDS's serializer for the whole dataset (never a mix of the two).

`write_shards` writes whole shards per thread; each shard's records keep their order, so the
files do not depend on the number of threads.
"""
import concurrent.futures
import dataclasses
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

_LENGTH_DELIMITED = 2  # protobuf wire type of bytes, strings and sub-messages
# Field numbers in tensorflow/core/example/{example,feature}.proto.
_EXAMPLE_FEATURES = 1   # Example.features
_FEATURES_MAP = 1       # Features.feature (map<string, Feature>)
_MAP_KEY, _MAP_VALUE = 1, 2
_FEATURE_BYTES_LIST, _FEATURE_INT64_LIST = 1, 3
_LIST_VALUE = 1         # BytesList.value / Int64List.value (packed)


_SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int64 values take 10 bytes (two's complement)."""
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _header(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited field (the payload follows)."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(length)


def _field(number: int, payload: bytes) -> bytes:
    return _header(number, len(payload)) + payload


def _read_varint(data: bytes, pos: int):
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _map_keys(serialized: bytes) -> List[str]:
    """The feature names of a serialized Example, in the order its map entries appear."""
    _, pos = _read_varint(serialized, 0)  # Example.features tag
    length, pos = _read_varint(serialized, pos)
    end, keys = pos + length, []
    while pos < end:
        _, pos = _read_varint(serialized, pos)  # map entry tag
        length, pos = _read_varint(serialized, pos)
        entry = serialized[pos:pos + length]
        pos += length
        _, key_pos = _read_varint(entry, 0)  # key tag
        key_length, key_pos = _read_varint(entry, key_pos)
        keys.append(entry[key_pos:key_pos + key_length].decode('utf-8'))
    return keys


class ExampleEncoder:
    """Serializes flat examples of scalar bytes/integer features exactly as TFDS does.

    Args:
      features: the dataset's FeaturesDict; every serialized feature must be a scalar string
        or integer (else ValueError).
      probe: one example as `_generate_examples` yields it (TFDS's input form).
      probe_values: the same example as `encode` takes it: feature name -> bytes or int.
    Attributes:
      exact: whether the direct encoding reproduced TFDS's bytes for the probe. When False,
        `encode` uses TFDS's serializer (slower, same records).
    """

    def __init__(self, features: tfds.features.FeaturesDict, probe: dict, probe_values: Dict[str, object]):
        info = features.get_serialized_info()
        self._integer = {}
        for name, tensor_info in info.items():
            if tuple(tensor_info.shape) != () or not (tensor_info.np_dtype == np.object_
                                                      or np.issubdtype(tensor_info.np_dtype, np.integer)):
                raise ValueError(f'ExampleEncoder handles scalar string/integer features only, not {name}: '
                                 f'{tensor_info}')
            self._integer[name] = tensor_info.np_dtype != np.object_
        self._features = features
        self._tfds = example_serializer.ExampleSerializer(info)
        reference = self._tfds_encode(probe)
        self._order = _map_keys(reference)
        self._key_fields = {name: _field(_MAP_KEY, name.encode('utf-8')) for name in self._order}
        self.exact = sorted(self._order) == sorted(info) and self._direct_encode(probe_values) == reference

    def _tfds_encode(self, example: dict) -> bytes:
        return self._tfds.serialize_example(self._features.encode_example(example))

    def _direct_encode(self, values: Dict[str, object]) -> bytes:
        # Headers are built from lengths and joined once, so the image bytes are copied once
        # (nesting each message in the next would copy them at every level).
        pieces, total = [], 0
        for name in self._order:
            value = values[name]
            if self._integer[name]:
                body, kind = [_varint(value)], _FEATURE_INT64_LIST
            else:
                body, kind = [value], _FEATURE_BYTES_LIST
            length = len(body[0])
            for number in (_LIST_VALUE, kind, _MAP_VALUE):
                header = _header(number, length)
                body.insert(0, header)
                length += len(header)
            body.insert(0, self._key_fields[name])
            length += len(self._key_fields[name])
            header = _header(_FEATURES_MAP, length)
            pieces += [header] + body
            total += len(header) + length
        return b''.join([_header(_EXAMPLE_FEATURES, total)] + pieces)

    def encode(self, example: dict, values: Dict[str, object]) -> bytes:
        """The serialized tf.train.Example of one example, given in both forms (see Args)."""
        return self._direct_encode(values) if self.exact else self._tfds_encode(example)


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One TFRecord file to write: its path and the items of its records, in order."""
    path: str
    items: Sequence


def write_shards(jobs: Sequence[ShardJob], serialize: Callable[[object], Optional[bytes]],
                 threads: Optional[int] = None) -> List[int]:
    """Writes every job's records (`serialize(item)`, in order) to its TFRecord file.

    An item that `serialize` maps to None is left out (the caller has recorded why). Whole
    shards go to `threads` threads (default: the CPU count, at most 8): reading the images and
    writing the files release the GIL. Returns each file's size in bytes.
    """
    def write(job: ShardJob) -> int:
        with tf.io.TFRecordWriter(job.path) as writer:
            for item in job.items:
                record = serialize(item)
                if record is not None:
                    writer.write(record)
        return tf.io.gfile.stat(job.path).length  # Also on gs:// (a build straight into a bucket).

    threads = threads or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(write, jobs))
