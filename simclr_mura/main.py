"""One run: mode (train / eval / train_then_eval) x train_mode (pretrain / finetune / baseline).

`run(config)` is what `run.py` calls after turning flags into a `Config`. Order of work:
1. check the settings and whether the dataset is available (all problems reported together, one
   line each, before anything slow happens);
2. build the dataset from `--tfds_manual_dir` if asked, then check the split names and the batch
   sizes against the dataset and the distribution strategy;
3. build the model under the strategy, then train and/or evaluate (+ export) as the mode says;
   a training run holds `model_dir`'s run lock (`run_lock.py`) from here to its end; a new one
   writes its settings (`flags.json`) first, so the probe and the report can read a run that only
   trained or has not finished; each evaluation writes them again beside its result.
"""
import contextlib
import dataclasses
from typing import Any, Dict, Optional

import tensorflow as tf
from absl import logging

from simclr_mura import checkpoints
from simclr_mura import config as config_lib
from simclr_mura import data as data_lib
from simclr_mura import evaluate as evaluate_lib
from simclr_mura import export as export_lib
from simclr_mura import io_util
from simclr_mura import preemption
from simclr_mura import recipes
from simclr_mura import run_lock
from simclr_mura import schedule
from simclr_mura import train as train_lib
from simclr_mura.config import Config, ConfigError
from simclr_mura.study import run_files

EVAL_POLL_SECONDS = 15  # As the original's checkpoints_iterator in mode=eval.


class WorkerLostError(RuntimeError):
    """A multi-worker run lost another worker (it stopped, crashed or cannot be reached)."""


# How TensorFlow reports a lost peer in a collective op or the coordination service.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.InternalError)


@dataclasses.dataclass
class RunResult:
    """What a run did: the final training step, the last eval result and the last export."""
    final_step: Optional[int] = None
    eval_result: Optional[Dict[str, Any]] = None
    export_path: Optional[str] = None


def _latest_checkpoint(model_dir: Optional[str]) -> Optional[str]:
    return tf.train.latest_checkpoint(model_dir) if model_dir and tf.io.gfile.isdir(model_dir) else None


def check_start(config: Config):
    """Validates the settings and the dataset's availability; returns the (unprepared) builder.

    Raises:
      ConfigError: every problem found, one per line; a missing dataset comes first.
    """
    errors = []
    builder = None
    try:
        builder = data_lib.make_builder(config.dataset, config.data_dir)
        if not builder.is_prepared() and not config.tfds_manual_dir:
            errors.append(data_lib.not_built_message(config.dataset, config.data_dir))
    except data_lib.DatasetNotBuiltError as e:
        errors.append(str(e))
    try:
        config_lib.validate(config, resuming=_latest_checkpoint(config.model_dir) is not None)
    except ConfigError as e:
        errors.extend(str(e).splitlines())
    if errors:
        raise ConfigError('\n'.join(errors))
    return builder


def _check_split_sizes(builder, config: Config) -> None:
    errors = []
    for flag in config.split_flags:
        split = getattr(config, flag)
        try:
            n = data_lib.num_examples(builder, split)
        except Exception as e:  # TFDS rejects bad slices with several exception types.
            errors.append(f'--{flag}={split}: {str(e).splitlines()[0]}')
            continue
        if n == 0:
            errors.append(f'--{flag}={split} has no examples in {config.dataset}')
    if errors:
        raise ConfigError('\n'.join(errors))


def _evaluate_and_export(recipe: recipes.Recipe, model, builder, strategy, checkpoint_path: str,
                         result: RunResult, extra_results: Dict[str, Any]) -> None:
    # SIGTERM (preemption) as in training: the evaluation stops after the batch in progress, the
    # export after the save in progress, before anything is written under model_dir's final names;
    # run.py exits with 143 and a rerun evaluates (and exports) the same checkpoint again.
    with preemption.SigtermWatch() as sigterm:
        _evaluate_and_export_watched(recipe, model, builder, strategy, checkpoint_path, result,
                                     extra_results, sigterm)


def _evaluate_and_export_watched(recipe: recipes.Recipe, model, builder, strategy,
                                 checkpoint_path: str, result: RunResult, extra_results: Dict[str, Any],
                                 sigterm: preemption.SigtermWatch) -> None:
    config = recipe.config
    chief = train_lib.is_chief(strategy)
    checkpoints.check_compatible(model, checkpoint_path, recipe.architecture(), label='checkpoint')
    preprocess_fn = recipe.eval_preprocess_fn()
    result.eval_result = evaluate_lib.evaluate(config, model, builder, strategy, checkpoint_path,
                                               write_files=chief, extra_results=extra_results,
                                               preprocess_fn=preprocess_fn,
                                               stop_requested=lambda: sigterm.requested)
    # Every worker exports (saving reads variables that may be synchronised across workers); the
    # non-chief ones into a private directory that is removed right after.
    export_dir = config.model_dir if chief else train_lib.private_dir('export')
    step = result.eval_result['global_step']
    try:
        path = export_lib.export(model, export_dir, step, config.image_size,
                                 config.keep_hub_module_max,
                                 preprocess_fn=preprocess_fn,
                                 stop_requested=lambda: sigterm.requested)
        if path is None:
            raise preemption.Preempted(step, checkpoint_path, during='export')
    finally:
        if not chief:
            train_lib.remove_private_dir(export_dir)
    if chief:
        result.export_path = path


def _class_weights(config: Config, builder):
    """The class weights in use ([part, label] array or None) and their description for results."""
    info: Dict[str, Any] = {'class_weighting': config.class_weighting_in_use}
    if config.class_weighting_in_use != 'mura':
        return None, info
    table = data_lib.mura_class_weight_table(builder, config.train_split)
    logging.info('MURA class weights from the image counts of %s (w_abnormal = normal fraction, '
                 'w_normal = abnormal fraction, per body part):', config.train_split)
    for line in table.describe():
        logging.info('  %s', line)
    info.update(class_weights_split=config.train_split, class_weights=table.as_dict())
    return table.weights, info


def _eval_loop(recipe: recipes.Recipe, model, builder, strategy, train_steps: int,
               result: RunResult, extra_results: Dict[str, Any]) -> None:
    """Evaluates each new checkpoint in model_dir until one reaches train_steps (as the original)."""
    config = recipe.config
    if _latest_checkpoint(config.model_dir) is None:
        logging.info('Waiting for checkpoints in %s (polling every %d s).', config.model_dir,
                     EVAL_POLL_SECONDS)
    for path in tf.train.checkpoints_iterator(config.model_dir, min_interval_secs=EVAL_POLL_SECONDS):
        # As training's resume: a checkpoint that does not read back (torn, damaged, or deleted
        # by the trainer's keep_checkpoint_max meanwhile) is not evaluated. The evaluator only
        # reads model_dir, so it skips the checkpoint instead of moving it aside; the training
        # run sets it aside when it resumes and writes that step again.
        problem = checkpoints.checkpoint_problem(path)
        if problem is not None:
            logging.warning('Checkpoint %s does not read back (%s): not evaluated; waiting for '
                            'the next one.', path, problem)
            continue
        _evaluate_and_export(recipe, model, builder, strategy, path, result, extra_results)
        if result.eval_result['global_step'] >= train_steps:
            logging.info('Eval complete: step %d >= train_steps %d.',
                         result.eval_result['global_step'], train_steps)
            return


def check_strategy(config: Config, strategy: tf.distribute.Strategy) -> None:
    """Combinations that depend on the strategy picked at run time."""
    errors = []
    mirrored = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
    if config.jit_compile and isinstance(strategy, mirrored):
        errors.append(f'--jit_compile cannot run under {type(strategy).__name__} (its cross-replica '
                      'variable updates cannot be XLA-compiled); use one device, or a TPU, whose '
                      'steps are always XLA-compiled')
    if errors:
        raise ConfigError('\n'.join(errors))


def run(config: Config, strategy: Optional[tf.distribute.Strategy] = None) -> RunResult:
    """Runs `config.mode` for `config.train_mode`; see the module docstring.

    Args:
      config: the run's settings.
      strategy: a distribution strategy to use instead of the one `train.make_strategy` picks
        (tests pass a MirroredStrategy over logical CPUs).

    Raises:
      ConfigError: bad settings, a missing dataset or a mismatching checkpoint (one line each).
      WorkerLostError: a multi-worker run lost another worker.
    """
    builder = check_start(config)
    data_lib.ensure_prepared(builder, config.tfds_manual_dir)
    config_lib.validate(config, available_splits=list(builder.info.splits.keys()),
                        resuming=_latest_checkpoint(config.model_dir) is not None)
    _check_split_sizes(builder, config)
    train_lib.configure_runtime(config)
    strategy = strategy or train_lib.make_strategy(config)
    config_lib.validate(config, num_replicas=strategy.num_replicas_in_sync, resuming=True)
    check_strategy(config, strategy)

    training = config.mode in ('train', 'train_then_eval')
    # Only a training run writes checkpoints; an evaluator may follow it (--mode=eval).
    writes_run_files = training and train_lib.is_chief(strategy)
    lock = run_lock.hold(config.model_dir) if writes_run_files else contextlib.nullcontext()
    with lock:
        settings = tf.io.gfile.join(config.model_dir, run_files.FLAGS)
        # A resumed run keeps its settings until it evaluates: a resume that then fails (say, on
        # another architecture than its checkpoint's) must not overwrite them.
        if writes_run_files and not tf.io.gfile.exists(settings):
            io_util.write_json_atomic(settings, config.to_dict())
        try:
            return _run_mode(config, builder, strategy)
        except _PEER_ERRORS as e:
            if not train_lib.is_multi_worker(strategy):
                raise
            latest = _latest_checkpoint(config.model_dir)
            raise WorkerLostError(
                f'lost contact with another worker of the cluster ({config_lib.first_line(e)}); '
                'restart every worker with the same command to resume from the newest checkpoint '
                f'in --model_dir ({latest or "none yet: from the start"})') from e


def _run_mode(config: Config, builder, strategy: tf.distribute.Strategy) -> RunResult:
    num_train = data_lib.num_examples(builder, config.train_split)
    train_steps = schedule.get_train_steps(num_train, config.train_batch_size, config.train_epochs,
                                           config.train_steps)
    num_classes = builder.info.features['label'].num_classes
    class_weights, weight_info = _class_weights(config, builder)
    weight_info['num_train_examples'] = num_train  # The report's "labelled training images".
    recipe = recipes.for_config(config)
    with strategy.scope():
        model = recipe.build_model(num_classes)

    result = RunResult()
    if config.mode in ('train', 'train_then_eval'):
        result.final_step = train_lib.train(config, builder, strategy, model,
                                            num_train_examples=num_train, class_weights=class_weights,
                                            recipe=recipe)
    if config.mode == 'train_then_eval':
        # As the original: evaluate (and export) the latest checkpoint only.
        _evaluate_and_export(recipe, model, builder, strategy, _latest_checkpoint(config.model_dir),
                             result, weight_info)
    elif config.mode == 'eval':
        _eval_loop(recipe, model, builder, strategy, train_steps, result, weight_info)
    return result
