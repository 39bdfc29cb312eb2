"""Evaluation: eval loop -> per-image predictions CSV -> metrics -> result files and summaries.

As the original's `perform_evaluation`, the model is restored from one checkpoint (model weights
and global step), run with training=False over `eval_split` (centre crop, or the baseline's plain
resize; no repeat, partial last batch kept) and the results are written to `model_dir`:
TensorBoard summaries at the checkpoint's step, `result.json` (overwritten), `result_<step>.json`
and `flags.json` (the run's settings).
The original's `eval/label_top_1_accuracy` and `eval/regularization_loss` are kept;
`eval/label_top_5_accuracy` is dropped because with 2 classes it is always 1. Added:
`predictions_<split>_<step>.csv` (image_id, study_id, body_part, label, probability of abnormal)
and the image- and study-level metrics of `metrics.py` under `eval/<level>/<group>/<metric>`. The
same evaluation serves SimCLR and the DenseNet baseline, so their results are comparable.
"""
import math
import os
import re
from typing import Any, Callable, Dict, Optional

import numpy as np
import pandas as pd
import tensorflow as tf
from absl import logging

from simclr_mura import data as data_lib
from simclr_mura import faults
from simclr_mura import io_util
from simclr_mura import metrics as metrics_lib
from simclr_mura import model as model_lib
from simclr_mura import preemption
from simclr_mura.config import Config
from simclr_mura.study import run_files


def restore_for_eval(model, checkpoint_path: str) -> int:
    """Loads model weights and the global step from a training checkpoint; returns the step."""
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    tf.train.Checkpoint(model=model, global_step=global_step).restore(checkpoint_path).expect_partial()
    return int(global_step.numpy())


class Predictor:
    """Per-image abnormality probabilities of a model; one compiled step, reused for every call.

    With several workers (MultiWorkerMirroredStrategy) or hosts (a TPU pod slice), evaluation is
    sharded: each input pipeline reads a disjoint part of the split, padded to the same number of
    full batches (`data.build_input_fn`), and every step all-gathers the replicas' keys and
    probabilities, so every worker holds the predictions of every image exactly once. Chosen over
    "the chief evaluates alone while the others wait" because the model's variables are
    distributed: a chief-only pass would need a second, undistributed model and a barrier, while
    the sharded pass is the same code on one device, one host or many, costs each worker 1/N of
    the split, and gives every worker the same metrics (the baseline's plateau decision, taken
    from them on every worker, stays in step). Only the chief writes files (`evaluate`).

    The probability is softmax(logits)[:, 1] for the SimCLR head and sigmoid(logit) for the
    baseline's (`model.abnormal_probability`).
    """

    def __init__(self, model, strategy: tf.distribute.Strategy):
        self.model = model
        self.strategy = strategy

        def replica_step(images, targets):
            _, logits = model(images, training=False)
            return targets['key'], model_lib.abnormal_probability(logits)

        @tf.function
        def eval_step(images, targets):
            key, probability = strategy.run(replica_step, (images, targets))
            # All replicas' rows on every worker (an all-gather across workers).
            return strategy.gather(key, axis=0), strategy.gather(probability, axis=0)

        self._eval_step = eval_step

    def __call__(self, builder, *, split: str, batch_size: int, image_size: int,
                 eval_steps: Optional[int] = None, preprocess_fn=None,
                 stop_requested: Optional[Callable[[], bool]] = None) -> Optional[pd.DataFrame]:
        """Predictions of `split` as `predict` returns them; None if `stop_requested()` turned
        true (checked after every batch)."""
        strategy = self.strategy
        input_fn = data_lib.build_input_fn(builder, split, batch_size, is_training=False,
                                           is_pretrain=False, image_size=image_size,
                                           preprocess_fn=preprocess_fn)
        dataset = data_lib.build_distributed_dataset(input_fn, strategy)
        keys, probabilities = [], []
        for step, (images, targets) in enumerate(dataset):
            if eval_steps and step >= eval_steps:
                break
            key, probability = self._eval_step(images, targets)
            keys.append(key.numpy())
            probabilities.append(probability.numpy())
            if stop_requested is not None and stop_requested():
                return None
        found = pd.DataFrame({'key': np.concatenate(keys) if keys else np.array([], np.int64),
                              'probability': np.concatenate(probabilities) if probabilities else []})
        found = found[found['key'] != data_lib.PADDING_KEY]
        index = data_lib.split_index(builder, split)
        table = found.merge(index, on='key', how='left', validate='one_to_one')
        if table['image_id'].isna().any():
            raise RuntimeError(f'{table["image_id"].isna().sum()} predictions of split {split} could '
                               'not be matched to an image id')
        table = table.sort_values('image_id').reset_index(drop=True)
        return table[list(metrics_lib.PREDICTION_COLUMNS)]


def predict(model, builder, strategy: tf.distribute.Strategy, *, split: str, batch_size: int,
            image_size: int, eval_steps: Optional[int] = None, preprocess_fn=None,
            stop_requested: Optional[Callable[[], bool]] = None) -> Optional[pd.DataFrame]:
    """Per-image abnormality probabilities of `split`, one row per image, sorted by image_id.

    Columns: image_id, study_id, body_part, label, probability. `eval_steps` limits the number
    of global batches (None or 0: the whole split). `preprocess_fn` is the eval preprocessing
    (None: SimCLR's centre crop; see `data.build_input_fn`).
    """
    return Predictor(model, strategy)(builder, split=split, batch_size=batch_size,
                                      image_size=image_size, eval_steps=eval_steps,
                                      preprocess_fn=preprocess_fn, stop_requested=stop_requested)


def _write_summaries(model_dir: str, values: Dict[str, Any], step: int) -> None:
    writer = tf.summary.create_file_writer(model_dir)
    with writer.as_default():
        for name, value in values.items():
            if (name.startswith('eval/') and isinstance(value, (int, float))
                    and not isinstance(value, bool) and math.isfinite(value)):
                tf.summary.scalar(name, value, step=step)
    writer.flush()
    writer.close()


def evaluate(config: Config, model, builder, strategy: tf.distribute.Strategy,
             checkpoint_path: str, *, write_files: bool = True,
             extra_results: Optional[Dict[str, Any]] = None,
             preprocess_fn=None,
             stop_requested: Optional[Callable[[], bool]] = None) -> Dict[str, Any]:
    """Evaluates one checkpoint on `config.eval_split` and writes the result files.

    Args:
      config: the run's settings (eval split, batch size, steps, model_dir, ...).
      model: the built model (under `strategy.scope()`); its weights are replaced by the checkpoint's.
      builder: the prepared `mura` TFDS builder.
      strategy: the distribution strategy.
      checkpoint_path: a training checkpoint prefix (`<model_dir>/ckpt-<step>`).
      write_files: write results, predictions and summaries (False on non-chief workers).
      extra_results: more entries for the result (e.g. the class weights in use); only numbers
        whose name starts with 'eval/' become summaries.
      preprocess_fn: the recipe's eval preprocessing (`Recipe.eval_preprocess_fn`; None: SimCLR's).
      stop_requested: checked after every batch and before the files are written; when it turns
        true, `preemption.Preempted` is raised and nothing is written.

    Returns:
      The result dict that `result.json` holds (NaN where a metric is undefined).
    """
    step = restore_for_eval(model, checkpoint_path)
    logging.info('Evaluating %s (step %d) on split %s.', checkpoint_path, step, config.eval_split)
    predictions = predict(model, builder, strategy, split=config.eval_split,
                          batch_size=config.eval_batch_size, image_size=config.image_size,
                          eval_steps=config.eval_steps,
                          preprocess_fn=preprocess_fn,
                          stop_requested=stop_requested)
    if predictions is None or (stop_requested is not None and stop_requested()):
        raise preemption.Preempted(step, checkpoint_path, during='evaluation')
    computed = metrics_lib.compute_metrics(predictions, study_level=config.eval_study_level)
    regularization = float(model_lib.add_weight_decay(model, config.optimizer,
                                                      config.weight_decay).numpy())
    result = {'eval/label_top_1_accuracy': computed['image']['overall']['accuracy'],
              'eval/regularization_loss': regularization,
              'global_step': step,
              'eval_split': config.eval_split,
              'checkpoint': checkpoint_path}
    result.update(metrics_lib.flatten(computed))
    result.update(extra_results or {})
    _log_result(result, config.eval_study_level)
    if write_files:
        model_dir = config.model_dir
        predictions_path = os.path.join(model_dir,
                                        run_files.predictions_filename(config.eval_split, step))
        io_util.write_text_atomic(predictions_path,
                                  predictions.to_csv(index=False, float_format='%.7g'))
        faults.maybe_fail('eval', step)
        io_util.write_json_atomic(os.path.join(model_dir, run_files.result_at_step(step)), result)
        io_util.write_json_atomic(os.path.join(model_dir, run_files.RESULT), result)
        io_util.write_json_atomic(os.path.join(model_dir, run_files.FLAGS), config.to_dict())
        _write_summaries(model_dir, result, step)
    return result


def _log_result(result: Dict[str, Any], study_level: bool) -> None:
    def fmt(key):
        value = result.get(key, math.nan)
        return f'{value:.4f}'
    logging.info('Eval at step %d: image accuracy %s, AUROC %s, F1 %s, kappa %s', result['global_step'],
                 fmt('eval/image/overall/accuracy'), fmt('eval/image/overall/auroc'),
                 fmt('eval/image/overall/f1'), fmt('eval/image/overall/kappa'))
    if study_level:
        logging.info('Eval at step %d: study accuracy %s, AUROC %s, kappa %s', result['global_step'],
                     fmt('eval/study/overall/accuracy'), fmt('eval/study/overall/auroc'),
                     fmt('eval/study/overall/kappa'))
