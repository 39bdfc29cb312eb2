"""Training checkpoints: the manager, resume, and initialisation from `--checkpoint`.

Layout as the original: `tf.train.Checkpoint(model=, global_step=optimizer.iterations,
optimizer=)` saved by a `CheckpointManager` as `<model_dir>/ckpt-<step>`. `--checkpoint` may be a
checkpoint prefix, a directory holding checkpoints (its newest one is used), or a SavedModel
directory (its `variables/variables`); only model weights are loaded from it. Before loading, the
model's variables are compared with the checkpoint's, and an architecture mismatch is reported with
the first variable that differs instead of a restore-time shape error or a silent partial load.

Resume reads back every tensor of the newest checkpoint first (TensorFlow checks each tensor's
CRC32C as it reads): a checkpoint that does not read back (torn by a crash on a file system without
atomic renames, or damaged on disk) is moved to `damaged_checkpoints/` and the run resumes from the
newest one that does. A checkpoint write that fails (disk full, quota) raises `CheckpointWriteError`
after removing its partial files, so the previous checkpoints stay the newest ones.
"""
import dataclasses
import os
import uuid
from typing import Dict, List, Optional, Tuple

import tensorflow as tf
import tf_keras
from absl import logging
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr_mura.config import ConfigError, first_line

_VALUE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_HEAD_PREFIX = 'model/supervised_head/'


DAMAGED_DIR = 'damaged_checkpoints'


class CheckpointMismatchError(ConfigError):
    """`--checkpoint` holds a model with another architecture than the configured one."""


class CheckpointWriteError(RuntimeError):
    """A training checkpoint could not be written (e.g. disk full); its partial files are removed."""


@dataclasses.dataclass
class RestoreResult:
    """What `initialize_from_checkpoint` did."""
    checkpoint_path: str
    head_restored: bool
    reason: str


def _reader(prefix: str):
    """The reader of checkpoint `prefix`. Unlike `tf.train.load_checkpoint` it does not ask whether
    the prefix is a directory first: on file systems whose directories are bare name prefixes
    (TensorFlow's ram://) `ckpt-2` counts as one, since `ckpt-2.index` starts with it."""
    return tf.compat.v1.train.NewCheckpointReader(prefix)


def resolve_checkpoint_path(path: str) -> str:
    """Accepts a checkpoint prefix, a directory with checkpoints, or a SavedModel directory."""
    if tf.io.gfile.exists(path + '.index'):  # A prefix (asked first: see `_reader`).
        return path
    if tf.io.gfile.isdir(path):
        saved_model_prefix = os.path.join(path, 'variables', 'variables')
        if tf.io.gfile.exists(saved_model_prefix + '.index'):
            return saved_model_prefix
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise ValueError(f'No checkpoint found in directory {path!r}: pass a checkpoint '
                             f'prefix such as .../ckpt-1234 or a SavedModel directory.')
        return latest
    if not tf.io.gfile.exists(path + '.index'):
        raise ValueError(f'{path!r} is not a checkpoint: expected {path}.index to exist. Pass a '
                         f'checkpoint prefix (e.g. .../ckpt-1234), not a data file.')
    return path


def make_manager(model, optimizer, model_dir: str, max_to_keep: int,
                 extra: Optional[Dict[str, tf.Module]] = None
                 ) -> Tuple[tf.train.Checkpoint, tf.train.CheckpointManager]:
    """The original's training checkpoint and its manager (files `ckpt-<step>` in `model_dir`).

    `extra` adds more training state under its names (e.g. the baseline's plateau decay state).
    """
    checkpoint = tf.train.Checkpoint(model=model, global_step=optimizer.iterations,
                                     optimizer=optimizer, **(extra or {}))
    manager = tf.train.CheckpointManager(checkpoint, directory=model_dir, max_to_keep=max_to_keep)
    return checkpoint, manager


def checkpoint_problem(path: str) -> Optional[str]:
    """None if every tensor of checkpoint `path` reads back (checksums included), else the problem."""
    try:
        reader = _reader(path)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as e:  # pylint: disable=broad-except  (the reader raises OpError, IndexError, ...)
        return first_line(e)
    return None


def set_aside_damaged(model_dir: str) -> Optional[str]:
    """Moves the newest checkpoints of `model_dir` that do not read back to `damaged_checkpoints/`.

    Newest first, until one reads back; the checkpoint state file is rewritten to list only the
    remaining ones. Returns the newest complete checkpoint, or None if there is none.
    """
    state = tf.train.get_checkpoint_state(model_dir)
    if state is None or not state.model_checkpoint_path:
        return None
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    damaged = []
    while paths:
        problem = checkpoint_problem(paths[-1])
        if problem is None:
            break
        damaged.append((paths.pop(), problem))
    if not damaged:
        return paths[-1]
    aside = os.path.join(model_dir, DAMAGED_DIR)
    tf.io.gfile.makedirs(aside)
    for path, problem in damaged:
        for name in tf.io.gfile.glob(path + '.*'):
            tf.io.gfile.rename(name, os.path.join(aside, os.path.basename(name)), overwrite=True)
        logging.warning('Checkpoint %s does not read back (%s): moved to %s; resuming from %s.', path,
                        problem, aside, paths[-1] if paths else 'scratch (no complete checkpoint left)')
    if paths:
        # Relative names, as CheckpointManager writes them, so the directory can be moved.
        tf.compat.v1.train.update_checkpoint_state(
            model_dir, os.path.basename(paths[-1]),
            all_model_checkpoint_paths=[os.path.basename(p) for p in paths])
    else:
        tf.io.gfile.remove(os.path.join(model_dir, 'checkpoint'))
    return paths[-1] if paths else None


def save(manager: tf.train.CheckpointManager, step: int) -> str:
    """`manager.save(checkpoint_number=step)`; a failed write raises CheckpointWriteError.

    The failed write's partial files are removed, so the checkpoint state still names the
    previous (complete) checkpoint.
    """
    try:
        return manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
        prefix = os.path.join(manager.directory, f'ckpt-{step}')
        for name in tf.io.gfile.glob(prefix + '.*') + tf.io.gfile.glob(prefix + '_temp*'):
            if tf.io.gfile.isdir(name):
                tf.io.gfile.rmtree(name)
            else:
                tf.io.gfile.remove(name)
        reason = first_line(e)
        previous = tf.train.latest_checkpoint(manager.directory)
        if previous and os.path.basename(previous) == os.path.basename(prefix):
            previous = None
        raise CheckpointWriteError(
            f'could not write checkpoint {prefix} ({reason}); its partial files were removed and '
            f'{"the newest complete checkpoint is " + previous if previous else "no checkpoint was written"}'
            '; free space in --model_dir (or raise the quota) and rerun the same command to '
            'resume') from e


def restore(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Restores training checkpoint `path` into `checkpoint` (model, optimizer, step, extras).

    Momentum or Adam state written by the original's optimizers (legacy Keras) is restored into
    this port's optimizer (`restore_with_legacy_slots`)."""
    if not restore_with_legacy_slots(checkpoint, path):
        checkpoint.restore(path).expect_partial()


def resume(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager) -> Optional[str]:
    """Restores the newest checkpoint of the manager's directory, if any (`restore`); returns its
    path."""
    latest = manager.latest_checkpoint
    if latest:
        restore(checkpoint, latest)
    return latest


# The original's momentum and Adam optimizers were Keras' OptimizerV2 ones (tf_keras.optimizers.legacy
# today): their state is in slot keys `<variable>/.OPTIMIZER_SLOT/optimizer/<slot>/...`. This port's
# tf_keras SGD and Adam keep it in other objects and refuse such slots on restore. (LARS is a legacy
# optimizer here as in the original: its "Momentum" slots restore as they are.)
_LEGACY_SLOTS = {'SGD': {'momentum': 'momentums'}, 'Adam': {'m': '_momentums', 'v': '_velocities'}}
_SLOT_MARK = '/.OPTIMIZER_SLOT/optimizer/'


def legacy_slot_names(path: str) -> List[str]:
    """The optimizer slot names in checkpoint `path` (e.g. ['m', 'v'] for the original's Adam)."""
    names = set()
    for key in tf.train.load_checkpoint(path).get_variable_to_shape_map():
        if _SLOT_MARK in key and key.endswith(_VALUE_SUFFIX):
            names.add(key.split(_SLOT_MARK, 1)[1][:-len(_VALUE_SUFFIX)])
    return sorted(names)


def _has_slot(optimizer, variable, slot: str) -> bool:
    try:
        optimizer.get_slot(variable, slot)
        return True
    except KeyError:
        return False


def restore_with_legacy_slots(checkpoint: tf.train.Checkpoint, path: str) -> bool:
    """Restores checkpoint `path` whose optimizer state is legacy Keras slots into `checkpoint`,
    copying the slots into its (unbuilt, non-legacy) SGD or Adam optimizer.

    Returns False, restoring nothing, when there is nothing to map: a legacy optimizer (LARS) or a
    checkpoint without slots. Slots that do not fit the optimizer (e.g. Adam state resumed with
    --optimizer=momentum) are refused with one line."""
    optimizer = getattr(checkpoint.optimizer, 'inner_optimizer', checkpoint.optimizer)
    if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
        return False
    names = legacy_slot_names(path)
    if not names:
        return False
    kind = type(optimizer).__name__
    wanted = _LEGACY_SLOTS.get(kind, {})
    if set(names) != set(wanted):
        raise ConfigError(
            f'{path} holds optimizer state with slots {names} (a legacy Keras optimizer, as the '
            f'original\'s), which does not fit this run\'s {kind} optimizer; resume it with the '
            'optimizer that wrote it, or start a new --model_dir with --checkpoint to load its weights')
    if getattr(optimizer, '_built', False):
        raise ValueError('restore_with_legacy_slots needs an optimizer that is not built yet')
    # A legacy optimizer of the same kind stands in for the port's: TensorFlow's object matching
    # restores the model and every other object of the checkpoint, and (eagerly) creates the
    # stand-in's slots for exactly the variables the original optimized (those with gradients).
    stand_in = (tf_keras.optimizers.legacy.SGD(nesterov=True) if kind == 'SGD'
                else tf_keras.optimizers.legacy.Adam())
    objects = dict(tf.train.TrackableView(checkpoint).children(checkpoint))
    objects['optimizer'] = stand_in
    tf.train.Checkpoint(**objects).restore(path).expect_partial()
    first_slot = next(iter(wanted))
    optimized = [v for v in checkpoint.model.trainable_variables
                 if _has_slot(stand_in, v, first_slot)]
    # The port's optimizer keeps its state in lists by position: it is built with the same
    # variables, in the same order, as the training step builds it with (those with gradients).
    optimizer.build(optimized)
    for slot, attribute in wanted.items():
        for variable, value in zip(optimized, getattr(optimizer, attribute)):
            value.assign(stand_in.get_slot(variable, slot))
    logging.info('Restored the legacy Keras %s state (slots %s) of %s.', kind, ', '.join(names), path)
    return True


def _model_variable_shapes(model) -> Dict[str, List[int]]:
    """Checkpoint key -> shape of every variable of `model` under `Checkpoint(model=model)`.

    Written to TensorFlow's in-memory file system, which is the one reliable way to get the exact
    keys a restore will look up.
    """
    prefix = f'ram://simclr_mura_keys_{uuid.uuid4().hex}/ckpt'
    try:
        path = tf.train.Checkpoint(model=model).write(prefix)
        shapes = tf.compat.v1.train.NewCheckpointReader(path).get_variable_to_shape_map()
    finally:
        directory = prefix.rsplit('/', 1)[0]
        if tf.io.gfile.exists(directory):
            tf.io.gfile.rmtree(directory)
    return {k: v for k, v in shapes.items() if k.startswith('model/') and k.endswith(_VALUE_SUFFIX)}


def _short(key: str) -> str:
    return key[:-len(_VALUE_SUFFIX)] if key.endswith(_VALUE_SUFFIX) else key


def _escape(local_name: str) -> str:
    # How checkpoint keys spell object names ('.' -> '..', '/' -> '.S').
    return local_name.replace('.', '..').replace('/', '.S')


def checkpoint_shapes(path: str, keys) -> Dict[str, Optional[List[int]]]:
    """Shape of the variable each object-path key points to in checkpoint `path` (None if absent).

    Keys are followed through the checkpoint's object graph rather than matched as strings: a
    variable reachable by several paths is stored under its shortest one (a SavedModel stores the
    model's weights as `trainable_variables_list/<i>`), yet restoring `model/...` still finds it.
    """
    reader = _reader(path)
    shapes = reader.get_variable_to_shape_map()
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
    children = [{_escape(c.local_name): c.node_id for c in node.children} for node in graph.nodes]
    result = {}
    for key in keys:
        node: Optional[int] = 0
        for part in _short(key).split('/'):
            node = children[node].get(part)
            if node is None:
                break
        stored = None
        if node is not None:
            stored = next((a.checkpoint_key for a in graph.nodes[node].attributes
                           if a.name == 'VARIABLE_VALUE'), None)
        result[key] = list(shapes[stored]) if stored in shapes else None
    return result


def check_compatible(model, path: str, architecture: str, label: str = '--checkpoint') -> None:
    """Raises CheckpointMismatchError naming the first model variable the checkpoint cannot fill.

    The supervised head is not compared: `initialize_from_checkpoint` keeps a fresh head when the
    checkpoint's differs (e.g. another class count) or is absent. `model` must be built.

    Args:
      model: the built model.
      path: a checkpoint prefix.
      architecture: a short description of the configured model for the message.
      label: how the message names the checkpoint.
    """
    expected = _model_variable_shapes(model)
    keys = sorted(k for k in expected if not k.startswith(_HEAD_PREFIX))
    available = checkpoint_shapes(path, keys)
    missing = [k for k in keys if available[k] is None]
    for key in keys:
        if available[key] is not None and available[key] != list(expected[key]):
            raise CheckpointMismatchError(
                f'{label} {path} does not match the model ({architecture}): variable '
                f'{_short(key)} has shape {available[key]} in the checkpoint but '
                f'{list(expected[key])} in the model; use the resnet_depth, width_multiplier, '
                'sk_ratio, se_ratio and projection-head flags of the run that wrote it')
    if missing:
        raise CheckpointMismatchError(
            f'{label} {path} does not match the model ({architecture}): variable '
            f'{_short(missing[0])} is missing from the checkpoint ({len(missing)} of '
            f'{len(expected)} model variables missing); use the architecture flags of the run '
            'that wrote it')


class _ModelParts(tf.Module):
    """Stands in for the model in a restore that must leave the supervised head alone."""


def _head_decision(model, path: str, zero_init_logits_layer: bool) -> str:
    """'restored' if the checkpoint's supervised head fits the model's, else why it is skipped."""
    head = model.supervised_head
    if head is None:
        return 'model has no supervised head'
    if zero_init_logits_layer:
        return 'zero_init_logits_layer requested'
    expected = {k: v for k, v in _model_variable_shapes(model).items() if k.startswith(_HEAD_PREFIX)}
    available = checkpoint_shapes(path, expected)
    if all(shape is None for shape in available.values()):
        return 'checkpoint has no supervised head'
    for key, shape in expected.items():
        if available[key] != list(shape):
            return (f'checkpoint head variable {_short(key)} has shape {available[key]}, '
                    f'the model\'s {list(shape)}')
    return 'restored'


def initialize_from_checkpoint(model, checkpoint: str, zero_init_logits_layer: bool,
                               architecture: str) -> RestoreResult:
    """Loads model weights from `--checkpoint` (prefix, directory or SavedModel) after checking them.

    Optimizer state and step are not loaded. The supervised head is loaded only when the
    checkpoint has one of the same shape (the original then silently loads the pretraining
    linear-eval head, and crashes when the class counts differ); with `zero_init_logits_layer`
    it is zeroed instead (a no-op in the original). `model` must be built.

    Raises:
      ConfigError: the path holds no checkpoint.
      CheckpointMismatchError: the checkpoint's architecture differs from the model's.
    """
    try:
        path = resolve_checkpoint_path(checkpoint)
    except ValueError as e:
        raise ConfigError(f'--checkpoint: {e}') from e
    check_compatible(model, path, architecture)
    reason = _head_decision(model, path, zero_init_logits_layer)
    target = model
    if reason != 'restored':
        target = _ModelParts()
        target.resnet_model = model.resnet_model
        target._projection_head = model._projection_head  # pylint: disable=protected-access
    # Completeness was checked above by object path; a SavedModel lacks `save_counter`, so the
    # status assertions of tf.train.Checkpoint would fail on it.
    tf.train.Checkpoint(model=target).restore(path).expect_partial()
    if zero_init_logits_layer and model.supervised_head is not None:
        model.supervised_head.zero_init()
    logging.info('Initialised the model from --checkpoint %s (supervised head: %s%s).', path, reason,
                 ', zeroed' if zero_init_logits_layer else '')
    return RestoreResult(path, reason == 'restored', reason)
