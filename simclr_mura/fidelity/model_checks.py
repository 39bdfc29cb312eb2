"""Model fidelity checks against fixtures from the original SimCLR TF2 code.

`check_manifest(path)` compares the object-based checkpoint keys and shapes of this port with a
`ckpt_manifest_*.txt`; `check_forward(path)` loads weights by the fixture's weight-assignment
rule (keyed by checkpoint key) and compares the forward outputs with `forward.npz`. Formats:
tests/fixtures/official/README.md (sections 4 and 5). The model configuration is read from the
file: depth/width/SK from the name (`r<depth>[_<width>x][_sk<ratio>]`), everything else
(classes, projection head, CIFAR stem, SE) from the stored shapes and arrays.

Rows are `compare.Row`s; for key-set rows the "difference" is the number of mismatching keys.
"""
import os
import re
import tempfile
import zlib
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_mura import model as model_lib
from simclr_mura import resnet
from simclr_mura.fidelity.compare import Row, compare

Shapes = Dict[str, List[int]]

FORWARD_RTOL = 1e-4
FORWARD_ATOL = 1e-4
WEIGHT_SUM_ATOL = 1e-10
VALUE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'
_CFG = r'r(?P<depth>\d+)(?:_(?P<width>\d+)x)?(?:_sk(?P<sk>\d+(?:\.\d+)?))?'
_MANIFEST_RE = re.compile(rf'^ckpt_manifest_(?P<cfg>{_CFG})(?P<train>_train)?\.txt$')
_STEM = 'model/resnet_model/initial_conv_relu_max_pool/'
_PROJ_KERNEL_RE = re.compile(r'^model/_projection_head/linear_layers/(\d+)/dense/kernel/')
_SE_RE = re.compile(r'^model/resnet_model/block_groups/(\d)/layers/0/.*se_reduce/(kernel|bias)/')

# Checkpoint key of the supervised head's kernel (object path of the original's Model).
HEAD_KERNEL_KEY = 'model/supervised_head/linear_layer/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE'


def parse_config_name(name: str) -> dict:
    """'r101_2x_sk0.0625' -> dict(resnet_depth=101, width_multiplier=2, sk_ratio=0.0625)."""
    match = re.fullmatch(_CFG, name)
    if not match:
        raise ValueError(f'Cannot parse a model configuration from {name!r}: expected '
                         f'r<depth>[_<width>x][_sk<ratio>], e.g. r50_1x_sk0.0625.')
    return dict(resnet_depth=int(match['depth']), width_multiplier=int(match['width'] or 1),
                sk_ratio=float(match['sk'] or 0.0))


def rule_value(key: str, shape: Sequence[int]) -> np.ndarray:
    """The fixture's deterministic value for the variable with checkpoint key `key` (float32)."""
    rng = np.random.default_rng(zlib.crc32(key.encode('utf-8')))
    leaf = key[:-len(VALUE_SUFFIX)].rsplit('/', 1)[-1] if key.endswith(VALUE_SUFFIX) else None
    shape = tuple(int(d) for d in shape)
    if leaf == 'kernel':
        value = rng.standard_normal(shape) * np.sqrt(1.0 / int(np.prod(shape[:-1])))
    elif leaf == 'gamma':
        value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif leaf in ('beta', 'moving_mean', 'bias'):
        value = 0.1 * rng.standard_normal(shape)
    elif leaf == 'moving_variance':
        value = rng.uniform(0.5, 1.5, shape)
    else:
        raise ValueError(f'The weight-assignment rule has no case for checkpoint key {key!r}.')
    return value.astype(np.float32)


def checkpoint_shapes(checkpoint: tf.train.Checkpoint) -> Shapes:
    """Saves `checkpoint` to a temporary directory and lists its keys and shapes."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = checkpoint.save(os.path.join(tmp, 'ckpt'))
        return {key: list(shape) for key, shape in tf.train.list_variables(prefix)}


def assign_rule_weights(model: tf.Module) -> Dict[str, np.ndarray]:
    """Sets every variable of a built model by the fixture rule; returns {key: value}.

    Uses only public APIs: the model's checkpoint is written, its values replaced key by key
    (same object graph) with SaveV2, and the result restored with every object matched.
    """
    values = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = tf.train.Checkpoint(model=model)
        prefix = checkpoint.save(os.path.join(tmp, 'original'))
        reader = tf.train.load_checkpoint(prefix)
        names, tensors = [], []
        for key, shape in sorted(reader.get_variable_to_shape_map().items()):
            if key.startswith('model/'):
                values[key] = rule_value(key, shape)
                tensors.append(tf.constant(values[key]))
            else:
                tensors.append(tf.constant(reader.get_tensor(key)))
            names.append(key)
        new_prefix = os.path.join(tmp, 'rule')
        tf.raw_ops.SaveV2(prefix=new_prefix, tensor_names=names,
                          shape_and_slices=[''] * len(names), tensors=tensors)
        checkpoint.restore(new_prefix).assert_consumed()
    return values


def _infer_ratio(pairs: Sequence[Tuple[int, int]], minimum: int) -> float:
    """A ratio s with max(int(f * s), minimum) == d for every (f, d) pair."""
    low, high = 0.0, float('inf')
    for filters, dim in pairs:
        if dim > minimum:
            low, high = max(low, dim / filters), min(high, (dim + 1) / filters)
        else:
            high = min(high, (minimum + 1) / filters)
    if not low < high:
        raise ValueError(f'No single ratio explains the widths {list(pairs)}.')
    return (low + high) / 2 if high != float('inf') else low * 1.5


def _se_ratio_from_shapes(shapes: Shapes, width_multiplier: int) -> float:
    pairs = [(64 * width_multiplier * 2**int(m[1]), shape[-1]) for key, shape in shapes.items()
             for m in [_SE_RE.match(key)] if m and m[2] == 'kernel']
    return _infer_ratio(pairs, 1) if pairs else 0.0


def model_kwargs_from_shapes(name_config: dict, shapes: Shapes) -> Tuple[dict, int]:
    """Model arguments (and an image size to build with) implied by checkpoint key shapes."""
    kwargs = dict(name_config, train_mode='pretrain')
    head = shapes.get(HEAD_KERNEL_KEY)
    kwargs['lineareval_while_pretraining'] = head is not None
    kwargs['num_classes'] = head[-1] if head else 2
    kwargs.update(_proj_kwargs({int(m[1]): shape[-1] for key, shape in shapes.items()
                                for m in [_PROJ_KERNEL_RE.match(key)] if m}))
    kwargs['se_ratio'] = _se_ratio_from_shapes(shapes, kwargs['width_multiplier'])
    stem_kernel = shapes.get(_STEM + '0/conv2d/kernel' + VALUE_SUFFIX, [7])
    cifar = stem_kernel[0] == 3 and not any(k.startswith(_STEM + '1/') for k in shapes)
    return kwargs, 32 if cifar else 64


def _proj_kwargs(widths: Dict[int, int]) -> dict:
    """Projection-head arguments from {layer index: output width}."""
    if not widths:
        return dict(proj_head_mode='none')
    if sorted(widths) != list(range(len(widths))):
        raise ValueError(f'Projection layers {sorted(widths)} are not numbered 0..n-1.')
    return dict(proj_head_mode='nonlinear', num_proj_layers=len(widths),
                proj_out_dim=widths[len(widths) - 1])


def build_model(kwargs: dict, image_size: int, num_views: int = 2) -> model_lib.Model:
    """Creates the model and builds it by one inference call on zeros."""
    model = model_lib.Model(image_size=image_size, **kwargs)
    model(tf.zeros((2, image_size, image_size, 3 * num_views)), training=False)
    return model


def read_manifest(path: str) -> Shapes:
    """Parses a `key<TAB>[d0, d1, ...]` manifest into {key: shape}."""
    shapes = {}
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                key, shape = line.rstrip('\n').split('\t')
                dims = shape.strip().strip('[]').strip()
                shapes[key] = [int(d) for d in dims.split(',')] if dims else []
            except ValueError as e:
                raise ValueError(f'{path}:{number}: expected "key<TAB>[d0, d1, ...]", '
                                 f'got {line!r}') from e
    return shapes


def _training_checkpoint_shapes(kwargs: dict, image_size: int, batch_size: int = 2) -> Shapes:
    """Keys of a full training checkpoint after one LARS step, as the original's run.py saves."""
    # Imported here: only this check needs the training pieces.
    from simclr_mura import objective  # pylint: disable=import-outside-toplevel
    from simclr_mura.lars_optimizer import LARSOptimizer  # pylint: disable=import-outside-toplevel
    device = tf.config.list_logical_devices('CPU')[0].name
    strategy = tf.distribute.MirroredStrategy([device])
    with strategy.scope():
        model = model_lib.Model(image_size=image_size, **kwargs)
        schedule = model_lib.WarmUpAndCosineDecay(
            0.3, num_examples=100, train_batch_size=batch_size, learning_rate_scaling='linear',
            warmup_epochs=10, train_epochs=100)
        optimizer = LARSOptimizer(schedule, momentum=0.9, weight_decay=1e-6,
                                  exclude_from_weight_decay=list(model_lib.LARS_EXCLUDE))
    images = tf.random.stateless_uniform((batch_size, image_size, image_size, 6), seed=(1, 2))
    labels = tf.one_hot(tf.range(batch_size) % kwargs['num_classes'], kwargs['num_classes'])

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            projection, logits = model(images, training=True)
            loss = model_lib.add_weight_decay(model, 'lars', 1e-6)
            if projection is not None:
                loss += objective.add_contrastive_loss(projection, True, 0.1, strategy)[0]
            if logits is not None:
                loss += objective.add_supervised_loss(tf.concat([labels, labels], 0), logits)
            loss /= strategy.num_replicas_in_sync
        variables = model.trainable_variables
        pairs = [(g, v) for g, v in zip(tape.gradient(loss, variables), variables)
                 if g is not None]
        optimizer.apply_gradients(pairs)

    tf.function(lambda x, y: strategy.run(replica_step, (x, y)))(images, labels)
    return checkpoint_shapes(tf.train.Checkpoint(
        model=model, global_step=optimizer.iterations, optimizer=optimizer))


def _key_rows(label: str, expected: Shapes, actual: Shapes) -> List[Row]:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = sorted(k for k in set(expected) & set(actual) if list(expected[k]) != list(actual[k]))
    rows = []
    for what, keys in (('missing keys', missing), ('extra keys', extra),
                       ('shape mismatches', wrong)):
        name = f'{label}: {what}'
        if keys:
            name += f' (e.g. {keys[0]})'
            logging.warning('%s: %d %s: %s', label, len(keys), what, keys[:20])
        rows.append(Row(name, float(len(keys)), 0.0, not keys))
    return rows


def check_manifest(path: str) -> List[Row]:
    """Compares this port's checkpoint keys and shapes with a `ckpt_manifest_*.txt`.

    Model-only manifests: `Checkpoint(model=model).save()` of the model built by one inference
    call. `_train` manifests: the full training checkpoint (model, global_step, LARS optimizer
    with its Momentum slots) after one training step under a one-replica MirroredStrategy.
    The contents of the object-graph entry are not compared.
    """
    base = os.path.basename(path)
    match = _MANIFEST_RE.match(base)
    if not match:
        raise ValueError(f'{base}: expected a name like ckpt_manifest_r50_1x_sk0.0625.txt or '
                         f'ckpt_manifest_r18_train.txt.')
    expected = read_manifest(path)
    kwargs, image_size = model_kwargs_from_shapes(parse_config_name(match['cfg']), expected)
    if match['train']:
        actual = _training_checkpoint_shapes(kwargs, image_size)
    else:
        actual = checkpoint_shapes(tf.train.Checkpoint(model=build_model(kwargs, image_size)))
    expected.pop(OBJECT_GRAPH_KEY, None)
    actual.pop(OBJECT_GRAPH_KEY, None)
    return _key_rows(base, expected, actual)


def _forward_config(data, cfg: str) -> Tuple[dict, int]:
    """Model arguments for the forward.npz configuration `cfg`."""
    kwargs = dict(parse_config_name(cfg), train_mode='pretrain', ft_proj_selector=0)
    layers = sorted(int(m[1]) for k in data.files
                    for m in [re.fullmatch(rf'{re.escape(cfg)}__proj_head_layer(\d+)_output', k)]
                    if m)
    widths = {j: data[f'{cfg}__proj_head_layer{j}_output'].shape[-1] for j in layers}
    kwargs.update(_proj_kwargs(widths))
    logits = f'{cfg}__logits_sup'
    kwargs['lineareval_while_pretraining'] = logits in data.files
    kwargs['num_classes'] = data[logits].shape[-1] if logits in data.files else 2
    kwargs['se_ratio'] = _se_ratio_from_sums(data, cfg, kwargs['width_multiplier'])
    return kwargs, int(data['image_size'])


def _se_ratio_from_sums(data, cfg: str, width_multiplier: int) -> float:
    """SE width is not stored in forward.npz; recover it from the rule's bias sums."""
    keys = [str(k) for k in data[f'{cfg}__weight_keys']]
    sums = dict(zip(keys, data[f'{cfg}__weight_sums']))
    pairs = []
    for key in keys:
        match = _SE_RE.match(key)
        if match and match[2] == 'bias':
            filters = 64 * width_multiplier * 2**int(match[1])
            rng = np.random.default_rng(zlib.crc32(key.encode('utf-8')))
            partial = np.cumsum((0.1 * rng.standard_normal(16 * filters)).astype(np.float32),
                                dtype=np.float64)
            hits = np.flatnonzero(np.abs(partial - sums[key]) <= 1e-9)
            if not hits.size:
                raise ValueError(f'{cfg}: cannot recover the SE width of {key}.')
            pairs.append((filters, int(hits[0]) + 1))
    return _infer_ratio(pairs, 1) if pairs else 0.0


def _weight_rows(data, cfg: str, values: Dict[str, np.ndarray]) -> List[Row]:
    keys = [str(k) for k in data[f'{cfg}__weight_keys']]
    # Shapes are not stored, so only the key sets are compared here.
    rows = _key_rows(f'{cfg}__weight_keys', dict.fromkeys(keys, []),
                     dict.fromkeys(values, []))[:2]
    common = [i for i, k in enumerate(keys) if k in values]
    first = [values[keys[i]].reshape(-1)[0] for i in common]
    sums = [np.sum(values[keys[i]], dtype=np.float64) for i in common]
    rows.append(compare(f'{cfg}__weight_first', first, data[f'{cfg}__weight_first'][common], 0.0))
    rows.append(compare(f'{cfg}__weight_sums', sums, data[f'{cfg}__weight_sums'][common],
                         WEIGHT_SUM_ATOL))
    return rows


def forward_arrays(model: model_lib.Model, inputs: np.ndarray) -> Dict[str, np.ndarray]:
    """Every quantity forward.npz can store, computed by this port (training=False)."""
    outputs = model.named_outputs(tf.constant(inputs), training=False)
    arrays = {k: v.numpy() for k, v in outputs.items() if k != 'proj_head_input'}
    if 'logits_sup' in outputs and model.projection_head.num_layers >= 1:
        # ft_proj_selector=1 feeds the head with hiddens_list[1]: ReLU(layer 0) unless layer 0
        # is the last layer (no ReLU there).
        hidden = outputs['proj_head_layer0_output']
        if model.projection_head.num_layers > 1:
            hidden = tf.nn.relu(hidden)
        arrays['logits_sup_ft_proj_selector1'] = model.supervised_head(
            hidden, training=False).numpy()
    for name in resnet.ENDPOINT_NAMES[:-1]:
        tensor = arrays.pop(name).astype(np.float64)
        arrays[f'{name}_mean'] = np.mean(tensor)
        arrays[f'{name}_channel_mean'] = np.mean(tensor, axis=(1, 2))
        arrays[f'{name}_shape'] = np.array(tensor.shape)
    return arrays


def _check_forward_config(data, cfg: str) -> List[Row]:
    kwargs, image_size = _forward_config(data, cfg)
    model = build_model(kwargs, image_size)
    values = assign_rule_weights(model)
    rows = _weight_rows(data, cfg, values)
    inputs = np.concatenate([data['input_view1'], data['input_view2']], axis=-1)
    arrays = forward_arrays(model, inputs)
    weight_arrays = {'weight_keys', 'weight_sums', 'weight_first'}
    for key in sorted(k for k in data.files if k.startswith(cfg + '__')):
        name = key[len(cfg) + 2:]
        if name in weight_arrays:
            continue
        if name not in arrays:
            rows.append(Row(f'{key} (not produced by this port)', float('inf'), 0.0, False))
        elif name.endswith('_shape'):
            rows.append(compare(key, arrays[name], data[key], 0.0))
        else:
            rows.append(compare(key, arrays[name], data[key], FORWARD_ATOL, FORWARD_RTOL))
    return rows


def check_forward(path: str) -> List[Row]:
    """Compares this port's forward pass (training=False) with a forward.npz, per config.

    For every `<cfg>__` prefix: the model is built from the configuration implied by the file,
    loaded with the rule's weights, run on concat(input_view1, input_view2) and compared
    array by array (rtol=atol=1e-4; shapes and weight_first exact; weight_sums within 1e-10).
    """
    rows = []
    with np.load(path) as data:
        for name in ('input_view1', 'input_view2', 'image_size'):
            if name not in data.files:
                raise ValueError(f'{path}: missing array {name!r} (see the fixture README, §5).')
        configs = sorted({k.split('__', 1)[0] for k in data.files if '__' in k})
        if not configs:
            raise ValueError(f'{path}: no <config>__<array> entries found.')
        for cfg in configs:
            rows.extend(_check_forward_config(data, cfg))
    return rows

