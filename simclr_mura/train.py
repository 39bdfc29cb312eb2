"""Strategy selection, model/optimizer construction and the custom training loop.

The loop is the original's (google-research/simclr `tf2/run.py`): a `tf.function` runs a graph
loop of `strategy.run(single_step)` over `steps_per_loop` steps; after each loop the metrics
(Keras `Mean`s, one value per loop) and the learning rate are logged and written as summaries and a
checkpoint is saved. Differences: training stops at exactly `train_steps` (the last loop is
shortened), a restarted run resumes from the newest checkpoint in `model_dir` and says so, every
loop logs a progress line (step, loss, examples/s, ETA), and `--checkpoint` is checked against the
model before it is loaded. The DenseNet-169 baseline (`--train_mode=baseline`, `baseline.py`) runs
through the same loop with its own model, loss, learning rate and an end-of-epoch plateau hook.

Reliability (docs/reliability.md): SIGTERM stops the loop after the step in progress and saves a
checkpoint there (`preemption.py`); resume skips checkpoints that do not read back; a failed
checkpoint write ends the run with one clear error; with --seed the pretraining blur's seed is a
function of the step, so a resumed run repeats it exactly.
"""
import os
import tempfile
import time
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from simclr_mura import baseline
from simclr_mura import checkpoints
from simclr_mura import data as data_lib
from simclr_mura import evaluate as evaluate_lib
from simclr_mura import faults
from simclr_mura import lars_optimizer
from simclr_mura import model as model_lib
from simclr_mura import objective
from simclr_mura import preemption
from simclr_mura import schedule
from simclr_mura.config import Config

LARS_EXCLUDE = ['batch_normalization', 'bias', 'head_supervised']


def make_strategy(config: Config) -> tf.distribute.Strategy:
    """TPUStrategy with --use_tpu; MultiWorkerMirrored if TF_CONFIG is set; else Mirrored.

    MirroredStrategy spans every visible GPU, or the one CPU when there is none, so CPU runs go
    through the same replica-context code (SyncBN, cross-replica negatives) as GPU runs. With
    --jit_compile on one device the default strategy is used instead (see the comment below).
    """
    if config.use_tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=config.tpu_name or config.master, zone=config.tpu_zone, project=config.gcp_project)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    elif os.environ.get('TF_CONFIG'):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif config.jit_compile and len(tf.config.list_logical_devices('GPU')) <= 1:
        # MirroredStrategy's cross-replica variable updates (BN moving averages) cannot run in an
        # XLA-compiled step, so a single-device XLA run uses the default (no-op) strategy.
        strategy = tf.distribute.get_strategy()
    else:
        strategy = tf.distribute.MirroredStrategy()
    logging.info('Strategy %s with %d replica(s).', type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this worker writes checkpoints, summaries and results (always true off multi-worker)."""
    resolver = getattr(strategy, 'cluster_resolver', None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, 'chief') or (task_type == 'worker' and task_id == 0
                                             and 'chief' not in resolver.cluster_spec().as_dict())


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether `strategy` spans several worker processes (MultiWorkerMirroredStrategy with a cluster)."""
    resolver = getattr(strategy, 'cluster_resolver', None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return False
    tasks = resolver.cluster_spec().as_dict()
    return len(tasks.get('chief', [])) + len(tasks.get('worker', [])) > 1


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Waits until every worker of a multi-worker run gets here (an all-reduce); no-op otherwise."""
    if is_multi_worker(strategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


def private_dir(purpose: str) -> str:
    """A fresh local directory for what a non-chief worker must write but nobody keeps (its
    checkpoint and export copies; they are collective operations, so every worker writes them)."""
    return tempfile.mkdtemp(prefix=f'simclr_mura_worker_{purpose}_')


def remove_private_dir(path: Optional[str]) -> None:
    if path and tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def configure_runtime(config: Config) -> None:
    """Seeds, op determinism and the Keras mixed-precision policy (process-wide settings)."""
    if config.seed is not None:
        tf_keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    policy = 'float32' if config.mixed_precision == 'none' else config.mixed_precision
    tf_keras.mixed_precision.set_global_policy(policy)


def architecture(config: Config) -> str:
    """Short description of the configured network, for messages."""
    if config.train_mode == 'baseline':
        return baseline.ARCHITECTURE
    return (f'resnet_depth={config.resnet_depth}, width_multiplier={config.width_multiplier}, '
            f'sk_ratio={config.sk_ratio}, se_ratio={config.se_ratio}, '
            f'proj_head_mode={config.proj_head_mode}, num_proj_layers={config.num_proj_layers}')


def build_model(config: Config, num_classes: int):
    """The SimCLR model, or the DenseNet-169 baseline in baseline mode (one sigmoid logit, whatever
    `num_classes`), with its variables created (call inside `strategy.scope()`)."""
    if config.train_mode == 'baseline':
        return baseline.build_model(config.image_size, config.zero_init_logits_layer)
    model = model_lib.Model(
        num_classes, train_mode=config.train_mode,
        lineareval_while_pretraining=config.lineareval_while_pretraining,
        resnet_depth=config.resnet_depth, width_multiplier=config.width_multiplier,
        sk_ratio=config.sk_ratio, se_ratio=config.se_ratio, image_size=config.image_size,
        global_bn=config.global_bn, batch_norm_decay=config.batch_norm_decay,
        proj_head_mode=config.proj_head_mode, proj_out_dim=config.proj_out_dim,
        num_proj_layers=config.num_proj_layers, ft_proj_selector=config.ft_proj_selector,
        fine_tune_after_block=config.fine_tune_after_block, use_blur=config.use_blur,
        zero_init_logits_layer=config.zero_init_logits_layer)
    # Build now, in cross-replica context, so checkpoints can be checked against the variables.
    model(tf.zeros([1, config.image_size, config.image_size, 3]), training=False)
    return model


# Folded into every blur seed: the data pipeline seeds example k with (seed, k) (data.py), so blur
# seeds (seed, step) would tie example k's flip and crop to step k's blur sigma and selector.
BLUR_SEED_STREAM = 1


def blur_seed(seed: int, step, num_replicas: int, replica_id) -> tf.Tensor:
    """The seeded pretraining blur's [2] int64 seed for one replica's step: (seed, step x replicas
    + replica id) with `BLUR_SEED_STREAM` folded in, a stream apart from the data's seeds."""
    counter = (tf.cast(step, tf.int64) * num_replicas + tf.cast(replica_id, tf.int64))
    return tf.random.experimental.stateless_fold_in(
        tf.stack([tf.constant(seed, tf.int64), counter]), tf.constant(BLUR_SEED_STREAM, tf.int64))


def build_optimizer(config: Config, learning_rate):
    """The original's `build_optimizer`: LARS, SGD with Nesterov momentum, or Adam."""
    if config.optimizer == 'lars':
        optimizer = lars_optimizer.LARSOptimizer(
            learning_rate, momentum=config.momentum, weight_decay=config.weight_decay,
            exclude_from_weight_decay=LARS_EXCLUDE)
    elif config.optimizer == 'momentum':
        optimizer = tf_keras.optimizers.SGD(learning_rate, config.momentum, nesterov=True)
    else:
        optimizer = tf_keras.optimizers.Adam(learning_rate)
    if config.mixed_precision == 'mixed_float16':
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def _metric_names(config: Config):
    names = ['train/weight_decay', 'train/total_loss']
    if config.train_mode == 'pretrain':
        names += ['train/contrast_loss', 'train/contrast_acc', 'train/contrast_entropy']
    if config.has_supervised_head:
        names += ['train/supervised_loss', 'train/supervised_acc']
    return names


def _supervised_loss(config: Config, labels, weights, logits):
    if config.train_mode == 'baseline':
        # The per-example weights are 1 with --class_weighting=none.
        return baseline.weighted_bce(labels, weights, logits)
    if config.class_weighting_in_use == 'none':
        return objective.add_supervised_loss(labels, logits)
    per_example = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(weights * per_example)


def _supervised_accuracy(config: Config, labels, logits):
    if config.train_mode == 'baseline':
        return baseline.binary_accuracy(labels, logits)
    return objective.supervised_accuracy(labels, logits)


def _make_compute_step(config: Config, model, optimizer, strategy):
    """(images, targets) -> (gradients, per-replica statistics); XLA-compiled with --jit_compile."""
    loss_scaling = isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer)

    def compute(images, targets, blur_seed=None):
        stats = {}
        with tf.GradientTape() as tape:
            if blur_seed is None:
                proj, logits = model(images, training=True)
            else:
                proj, logits = model(images, training=True, blur_seed=blur_seed)
            loss = tf.constant(0.0)
            if proj is not None:
                con_loss, logits_con, labels_con = objective.add_contrastive_loss(
                    tf.cast(proj, tf.float32), hidden_norm=config.hidden_norm,
                    temperature=config.temperature, strategy=strategy)
                loss += con_loss
                stats['train/contrast_loss'] = con_loss
                stats['train/contrast_acc'] = objective.contrastive_accuracy(labels_con, logits_con)
                stats['train/contrast_entropy'] = objective.contrastive_entropy(logits_con)
            if logits is not None:
                labels, weights = targets['label'], targets['weight']
                if config.train_mode == 'pretrain':
                    # The linear-eval head sees both views.
                    labels, weights = tf.concat([labels, labels], 0), tf.concat([weights, weights], 0)
                logits = tf.cast(logits, tf.float32)
                sup_loss = _supervised_loss(config, labels, weights, logits)
                loss += sup_loss
                stats['train/supervised_loss'] = sup_loss
                stats['train/supervised_acc'] = _supervised_accuracy(config, labels, logits)
            weight_decay = tf.cast(model_lib.add_weight_decay(model, config.optimizer,
                                                              config.weight_decay), tf.float32)
            loss += weight_decay
            stats['train/weight_decay'] = weight_decay
            stats['train/total_loss'] = loss
            scaled = loss / strategy.num_replicas_in_sync
            if loss_scaling:
                scaled = optimizer.get_scaled_loss(scaled)
        grads = tape.gradient(scaled, model.trainable_variables)
        if loss_scaling:
            grads = optimizer.get_unscaled_gradients(grads)
        return grads, stats

    if config.jit_compile:
        return tf.function(compute, jit_compile=True)
    return compute


# Called after the loop that ends an epoch, before its checkpoint is saved: step -> scalars to log.
EpochHook = Callable[[int], Dict[str, float]]


class Trainer:
    """Runs the training loop of one configured run; see `train` for the entry point.

    With `end_of_epoch`, loops also end at every multiple of `epoch_steps`, where the hook runs
    (e.g. the baseline's plateau decay) before that step's checkpoint is written.
    """

    def __init__(self, config: Config, strategy: tf.distribute.Strategy, model, optimizer,
                 lr_schedule, train_steps: int, steps_per_loop: int, epoch_steps: int = 0,
                 end_of_epoch: Optional[EpochHook] = None,
                 sigterm: Optional[preemption.SigtermWatch] = None):
        if end_of_epoch is not None and epoch_steps < 1:
            raise ValueError(f'end_of_epoch needs epoch_steps >= 1, got {epoch_steps}')
        self.config = config
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.train_steps = train_steps
        self.steps_per_loop = steps_per_loop
        self.epoch_steps = epoch_steps
        self.end_of_epoch = end_of_epoch
        # Read by the compiled loop before every step; set from a thread when SIGTERM arrives.
        self.sigterm = sigterm or preemption.SigtermWatch()
        with strategy.scope():
            self.metrics = {name: tf_keras.metrics.Mean(name) for name in _metric_names(config)}
        self._compute = _make_compute_step(config, model, optimizer, strategy)
        self._train_loop = tf.function(self._multiple_steps)
        self._reported_unused = False

    def _blur_seed(self, step):
        """With --seed, the pretraining blur's seed (`blur_seed`), so a resumed run blurs as the
        uninterrupted one; None (drawn statefully) otherwise."""
        if self.config.seed is None or self.config.train_mode != 'pretrain':
            return None
        replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
        return blur_seed(self.config.seed, step, self.strategy.num_replicas_in_sync, replica_id)

    def _single_step(self, images, targets, record_step):
        step = self.optimizer.iterations + 1
        with tf.summary.record_if(tf.equal(step, record_step)):
            tf.summary.image('image', images[..., :model_lib.view_channels(images.shape)],
                             step=step)
        grads, stats = self._compute(images, targets, self._blur_seed(step))
        pairs = [(g, v) for g, v in zip(grads, self.model.trainable_variables) if g is not None]
        unused = len(grads) - len(pairs)
        if unused and not self._reported_unused:
            # E.g. projection-head layers after the ft_proj_selector layer when fine-tuning; the
            # original passes their None gradients on and Keras warns at every trace.
            logging.info('%d trainable variables receive no gradient and are not updated.', unused)
            self._reported_unused = True
        self.optimizer.apply_gradients(pairs)
        for name, value in stats.items():
            self.metrics[name].update_state(value)

    def _multiple_steps(self, iterator, num_steps, record_step):
        for _ in tf.range(num_steps):
            if self.sigterm.stop_flag.read_value():
                break
            with tf.name_scope(''):
                images, targets = next(iterator)
                self.strategy.run(self._single_step, (images, targets, record_step))

    def run(self, iterator, manager: tf.train.CheckpointManager, writer, chief: bool) -> int:
        """Trains from the optimizer's current step to `train_steps`; returns the final step.

        Raises:
          preemption.Preempted: SIGTERM arrived; a checkpoint at the current step was saved.
          checkpoints.CheckpointWriteError: a checkpoint could not be written.
        """
        with self.sigterm:
            return self._run(iterator, manager, writer, chief)

    def _run(self, iterator, manager, writer, chief: bool) -> int:
        batch = self.config.train_batch_size
        cur_step = int(self.optimizer.iterations.numpy())
        start_step, start_time = cur_step, time.time()
        while not self.sigterm.requested:
            num_steps = schedule.steps_in_next_loop(cur_step, self.train_steps, self.steps_per_loop)
            if self.end_of_epoch is not None:
                num_steps = min(num_steps, self.epoch_steps - cur_step % self.epoch_steps)
            if not num_steps:
                break
            loop_start = time.time()
            with writer.as_default():
                self._train_loop(iterator, tf.constant(num_steps, tf.int64),
                                 tf.constant(cur_step + num_steps, tf.int64))
            done = int(self.optimizer.iterations.numpy()) - cur_step
            cur_step += done
            if not done and self.sigterm.requested:  # SIGTERM before the loop's first step.
                break
            faults.maybe_fail('train_step', cur_step)
            elapsed = time.time() - loop_start
            extra = {}
            if self.end_of_epoch is not None and cur_step % self.epoch_steps == 0:
                extra = self.end_of_epoch(cur_step)
            path = checkpoints.save(manager, cur_step)
            faults.maybe_tear_checkpoint(path, cur_step)
            self._log_loop(cur_step, done, elapsed, start_step, start_time, writer, chief, batch, extra)
        if self.sigterm.requested:
            path = manager.latest_checkpoint
            if not path or not path.endswith(f'-{cur_step}'):
                path = checkpoints.save(manager, cur_step)
            raise preemption.Preempted(cur_step, path)
        logging.info('Training complete: step %d of %d.', cur_step, self.train_steps)
        return cur_step

    def _log_loop(self, cur_step, num_steps, elapsed, start_step, start_time, writer, chief, batch,
                  extra: Dict[str, float]):
        values = {name: float(metric.result().numpy()) for name, metric in self.metrics.items()}
        # The rate of the next steps (after a plateau decay at this step, the decayed one).
        values['learning_rate'] = float(self.lr_schedule(cur_step).numpy())
        values.update(extra)
        if 'train/contrast_loss' in values:
            # Beside the contrastive metrics, so a log or a curve shows whether the task is learned.
            values.update(objective.contrastive_chance_levels(batch))
        rate = (cur_step - start_step) / max(time.time() - start_time, 1e-9)
        eta = (self.train_steps - cur_step) / rate if rate > 0 else float('nan')
        logging.info('Step %d/%d: loss %.4f, %.1f examples/s, ETA %s | %s', cur_step, self.train_steps,
                     values['train/total_loss'], num_steps * batch / max(elapsed, 1e-9),
                     _format_seconds(eta),
                     _format_values(values))
        if chief:
            with writer.as_default():
                for name, value in values.items():
                    tf.summary.scalar(name, value, step=cur_step)
            writer.flush()
        for metric in self.metrics.values():
            metric.reset_state()


def _format_values(values: Dict[str, float]) -> str:
    """'name value' pairs of the progress line; a metric with a `<name>_chance` companion reads
    'contrast_loss 10.2 (chance 11.08)'."""
    parts = []
    for key, value in values.items():
        if key == 'train/total_loss' or key.endswith('_chance'):
            continue
        text = f'{key.split("/")[-1]} {value:.4g}'
        if f'{key}_chance' in values:
            text += f' (chance {values[key + "_chance"]:.4g})'
        parts.append(text)
    return ', '.join(parts)


def _format_seconds(seconds: float) -> str:
    if not np.isfinite(seconds):
        return '?'
    seconds = int(round(seconds))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def learning_rate_schedule(config: Config, num_train_examples: int,
                           plateau: Optional[baseline.PlateauState] = None):
    """The baseline's constant rate (times the plateau scale), or SimCLR's warm-up + cosine decay."""
    if config.train_mode == 'baseline':
        # The paper's Adam at the given rate: no batch scaling, warm-up or cosine decay.
        return baseline.ConstantLearningRate(config.learning_rate, plateau)
    return schedule.WarmUpAndCosineDecay(
        config.learning_rate, num_train_examples, config.train_batch_size,
        config.learning_rate_scaling, config.warmup_epochs, config.train_epochs, config.train_steps)


def _initialize(config: Config, model) -> None:
    """Initial weights when `model_dir` has no checkpoint to resume from."""
    if config.train_mode == 'baseline':
        baseline.initialize_weights(model, config.baseline_weights, config.zero_init_logits_layer)
    elif config.checkpoint:
        checkpoints.initialize_from_checkpoint(model, config.checkpoint,
                                               config.zero_init_logits_layer, architecture(config))
    elif config.train_mode == 'finetune':
        logging.warning('Fine-tuning from random initialisation (--allow_random_init).')


def _plateau_hook(config: Config, model, builder, strategy, class_weights: Optional[np.ndarray],
                  plateau: baseline.PlateauState) -> EpochHook:
    """After each epoch: the weighted BCE on --baseline_plateau_split, then the plateau decision."""
    predictor = evaluate_lib.Predictor(model, strategy)
    part_names = builder.info.features['body_part'].names
    split = config.baseline_plateau_split

    def end_of_epoch(step: int) -> Dict[str, float]:
        predictions = predictor(builder, split=split, batch_size=config.eval_batch_size,
                                image_size=config.image_size,
                                preprocess_fn=baseline.preprocess_fn_for(config))
        loss = baseline.validation_loss(predictions, class_weights, part_names)
        decayed = plateau.update(loss)
        logging.info('Epoch end at step %d: validation loss %.5f on %s (best %.5f)%s.', step, loss, split,
                     float(plateau.best_loss.numpy()),
                     f'; no improvement, learning rate x{baseline.PLATEAU_FACTOR} -> '
                     f'{config.learning_rate * float(plateau.scale.numpy()):.3g}' if decayed else '')
        return {'baseline/validation_loss': loss,
                'baseline/learning_rate_scale': float(plateau.scale.numpy())}

    return end_of_epoch


def train(config: Config, builder, strategy: tf.distribute.Strategy, model, *,
          num_train_examples: int, class_weights: Optional[np.ndarray] = None) -> int:
    """Trains `model` (built under `strategy.scope()`) to exactly the configured number of steps.

    Resumes from the newest checkpoint in `model_dir` if there is one; otherwise loads
    `--checkpoint` (model weights only) if given, or `--baseline_weights` in baseline mode.
    Returns the final global step.
    """
    train_steps = schedule.get_train_steps(num_train_examples, config.train_batch_size,
                                           config.train_epochs, config.train_steps)
    epoch_steps = schedule.get_epoch_steps(num_train_examples, config.train_batch_size)
    steps_per_loop = schedule.get_checkpoint_steps(config.checkpoint_steps, config.checkpoint_epochs,
                                                   epoch_steps)
    plateau_on = config.train_mode == 'baseline' and config.baseline_plateau_decay
    chief = is_chief(strategy)
    # Non-chief workers of a multi-worker run save too (a save is collective), but into a private
    # directory removed at the end; every worker resumes from the chief's newest checkpoint.
    save_dir = config.model_dir if chief else private_dir('checkpoints')
    try:
        return _train(config, builder, strategy, model, num_train_examples, class_weights, chief,
                      save_dir, train_steps, epoch_steps, steps_per_loop, plateau_on)
    finally:
        if not chief:
            remove_private_dir(save_dir)


def _train(config: Config, builder, strategy, model, num_train_examples, class_weights, chief,
           save_dir, train_steps, epoch_steps, steps_per_loop, plateau_on) -> int:
    with strategy.scope():
        plateau = baseline.PlateauState() if plateau_on else None
        lr_schedule = learning_rate_schedule(config, num_train_examples, plateau)
        optimizer = build_optimizer(config, lr_schedule)
        checkpoint, manager = checkpoints.make_manager(
            model, optimizer, save_dir, config.keep_checkpoint_max,
            extra={'plateau': plateau} if plateau else None)
        latest = manager.latest_checkpoint
        if latest and chief and checkpoints.set_aside_damaged(config.model_dir) != latest:
            # The newest checkpoint did not read back; start over from the newest one that does.
            checkpoint, manager = checkpoints.make_manager(
                model, optimizer, config.model_dir, config.keep_checkpoint_max,
                extra={'plateau': plateau} if plateau else None)
        barrier(strategy)  # The others read model_dir once the chief has set damaged ones aside.
        latest = (tf.train.latest_checkpoint(config.model_dir)
                  if tf.io.gfile.isdir(config.model_dir) else None)
        if latest:
            # A clear message instead of a restore-time shape error when the flags changed.
            checkpoints.check_compatible(model, latest, architecture(config),
                                         label='checkpoint in --model_dir')
            checkpoint.restore(latest).expect_partial()
            logging.info('Resuming from checkpoint %s at step %d (train_steps %d).', latest,
                         int(optimizer.iterations.numpy()), train_steps)
        else:
            _initialize(config, model)
    start_step = int(optimizer.iterations.numpy())
    logging.info('Training %s on %s (%d examples): %d steps, %d per loop, global batch %d, '
                 '%d replica(s).', config.train_mode, config.train_split, num_train_examples,
                 train_steps, steps_per_loop, config.train_batch_size, strategy.num_replicas_in_sync)
    if config.train_mode == 'baseline':
        logging.info('Baseline: Adam at a constant learning rate %g%s.', config.learning_rate,
                     f', x{baseline.PLATEAU_FACTOR} when the loss on {config.baseline_plateau_split} '
                     f'does not improve over an epoch ({max(epoch_steps, 1)} steps)' if plateau_on else '')
    input_fn = data_lib.build_input_fn(
        builder, config.train_split, config.train_batch_size, is_training=True,
        is_pretrain=config.train_mode == 'pretrain', image_size=config.image_size,
        color_jitter_strength=config.color_jitter_strength, cache_dataset=config.cache_dataset,
        crop_min_area=config.crop_min_area,
        class_weights=class_weights,
        # A seeded run reads in a reproducible order, which also lets a resumed run skip ahead.
        deterministic=config.seed is not None, seed=config.seed, resume_step=start_step,
        preprocess_fn=baseline.preprocess_fn_for(config))
    iterator = iter(data_lib.build_distributed_dataset(input_fn, strategy))
    writer = tf.summary.create_file_writer(config.model_dir) if chief else tf.summary.create_noop_writer()
    hook = (_plateau_hook(config, model, builder, strategy, class_weights, plateau) if plateau_on
            else None)
    trainer = Trainer(config, strategy, model, optimizer, lr_schedule, train_steps, steps_per_loop,
                      epoch_steps=max(epoch_steps, 1), end_of_epoch=hook)
    final_step = trainer.run(iterator, manager, writer, chief)
    barrier(strategy)  # The chief's last checkpoint is written before anyone looks for it.
    return final_step
