"""SavedModel export: the original's named outputs plus a PNG-bytes serving signature.

`<model_dir>/saved_model/<step>/` holds a `tf.Module` whose `model` attribute is the SimCLR model, so
its `variables/variables` use the same `model/...` keys as training checkpoints and can be passed as
`--checkpoint`. As in the original, `__call__(inputs, trainable)` returns a dict of named tensors
(initial_conv, initial_max_pool, block_group1..4, final_avg_pool, proj_head_input,
proj_head_output, logits_sup) for float32 images of shape [batch, height, width, 3] in [0, 1], and
`trainable_variables_list` lists the model's trainable variables. Added: the `serving_default`
signature takes a batch of encoded PNG radiographs (`image_bytes`, string [batch]), applies the eval
preprocessing (grey decode, tiling to RGB, 0.875 centre crop, bicubic resize) and returns
`probability` (of abnormal, [batch]) and `logits_sup` ([batch, 2]). Only the newest
`keep_hub_module_max` exports are kept.

The DenseNet-169 baseline (`densenet.py`) is exported the same way, except: its `__call__` returns
only `final_avg_pool` (the pooled DenseNet features, [batch, 1664]) and `logits_sup` ([batch, 1]),
the named outputs it has (`model.export_output_names`); serving applies the recipe's eval
preprocessing (`Recipe.eval_preprocess_fn`, passed as `preprocess_fn`: the baseline's plain resize,
no crop), and `probability` is sigmoid(logit).
"""
import contextlib
import os
import uuid
from typing import Callable, List, Optional

import tensorflow as tf
from absl import logging

from simclr_mura import data_util
from simclr_mura import faults
from simclr_mura import model as model_lib

NAMED_OUTPUTS = ('initial_conv', 'initial_max_pool', 'block_group1', 'block_group2', 'block_group3',
                 'block_group4', 'final_avg_pool', 'proj_head_input', 'proj_head_output', 'logits_sup')
SERVING_INPUT = 'image_bytes'


def _without_keras_layer_traces():
    """Skips tracing every Keras layer's own call functions during the save.

    Those per-layer traces are what `model.save(save_traces=False)` leaves out; the export does not
    need them (its functions are traced explicitly) and they make a save about 3x slower. The
    switch lives in a private tf_keras module, hence the fallback.
    """
    try:
        from tf_keras.src.saving.legacy.saved_model import utils  # pylint: disable=import-outside-toplevel
        return utils.keras_option_scope(save_traces=False, in_tf_saved_model_scope=True)
    except (ImportError, AttributeError):
        return contextlib.nullcontext()


def _save(module, path: str) -> None:
    with _without_keras_layer_traces():
        tf.saved_model.save(module, path, signatures={'serving_default': module.serve})


class ExportModule(tf.Module):
    """What is saved: the model, its named outputs and the serving function."""

    def __init__(self, model, image_size: int, preprocess_fn=None):
        super().__init__(name='simclr_mura_export')
        if model.supervised_head is None:
            raise ValueError('export needs a supervised head (fine-tuning, or pretraining with '
                             'lineareval_while_pretraining)')
        self.model = model
        self.image_size = image_size
        self._preprocess_fn = preprocess_fn
        self._output_names = tuple(getattr(model, 'export_output_names', NAMED_OUTPUTS))
        self.trainable_variables_list = list(model.trainable_variables)

    @tf.function
    def __call__(self, inputs, trainable):
        endpoints = self.model.named_outputs(inputs, training=trainable)
        return {name: tf.cast(endpoints[name], tf.float32) for name in self._output_names}

    def _preprocess(self, png_bytes):
        image = tf.io.decode_png(png_bytes, channels=1)
        if self._preprocess_fn is not None:
            return self._preprocess_fn(image, is_training=False)
        return data_util.preprocess_image(image, self.image_size, self.image_size, is_training=False,
                                          test_crop=self.image_size > 32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
    def serve(self, image_bytes):
        """Encoded PNGs -> probability of 'abnormal' and the supervised logits."""
        size = self.image_size
        images = tf.map_fn(self._preprocess, image_bytes,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        logits = tf.cast(self.model.named_outputs(images, training=False)['logits_sup'], tf.float32)
        return {'probability': model_lib.abnormal_probability(logits), 'logits_sup': logits}


def _remove_tree(path: str) -> None:
    """Removes directory `path` and what is under it, if anything; also a bare directory marker
    (what ram:// leaves after renaming a directory), which `rmtree` reports as not found."""
    for remove in (tf.io.gfile.rmtree, tf.io.gfile.remove):
        try:
            if tf.io.gfile.exists(path):
                remove(path)
        except tf.errors.NotFoundError:
            continue


def _exported_steps(export_dir: str) -> List[int]:
    if not tf.io.gfile.isdir(export_dir):
        return []
    return sorted(int(d.rstrip('/')) for d in tf.io.gfile.listdir(export_dir) if d.rstrip('/').isdigit())


def export(model, model_dir: str, step: int, image_size: int, keep_hub_module_max: int = 1,
           preprocess_fn=None, stop_requested: Optional[Callable[[], bool]] = None
           ) -> Optional[str]:
    """Saves `model_dir/saved_model/<step>/` and deletes all but the newest `keep_hub_module_max`.

    `preprocess_fn(image, is_training=False)` is the serving preprocessing of a decoded grey PNG
    (None: SimCLR's eval preprocessing); see `data.build_input_fn`.

    The SavedModel is written under a temporary name and renamed into place (where the file system
    supports directory renames), so a killed export leaves no half-written `<step>` directory; the
next export removes such leftovers (`.tmp-*`).
    Returns the export path; None when `stop_requested()` (checked after the save to the
    temporary name) turned true: the temporary directory is then removed and nothing replaced.
    """
    export_dir = os.path.join(model_dir, 'saved_model')
    target = os.path.join(export_dir, str(step))
    tmp = os.path.join(export_dir, f'.tmp-{step}-{uuid.uuid4().hex[:8]}')
    module = ExportModule(model, image_size, preprocess_fn)
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    module.__call__.get_concrete_function(spec, True)
    module.__call__.get_concrete_function(spec, False)
    tf.io.gfile.makedirs(export_dir)
    for stale in tf.io.gfile.glob(os.path.join(export_dir, '.tmp-*')):
        # Left by an export that was killed before its rename.
        logging.info('Removing the unfinished export %s.', stale)
        tf.io.gfile.rmtree(stale)
    _save(module, tmp)
    faults.maybe_fail('export', step)
    if stop_requested is not None and stop_requested():
        tf.io.gfile.rmtree(tmp)
        return None
    if tf.io.gfile.exists(target):
        tf.io.gfile.rmtree(target)
    try:
        tf.io.gfile.rename(tmp, target)
        # gs:// renames a directory object by object; ram:// renames only the directory's marker
        # and leaves the files under the old name: check that the SavedModel arrived.
        renamed = tf.io.gfile.exists(os.path.join(target, 'saved_model.pb'))
    except (tf.errors.UnimplementedError, tf.errors.FailedPreconditionError):
        renamed = False
    if not renamed:
        # No directory renames here: save in place instead.
        for path in (tmp, target):
            _remove_tree(path)
        _save(module, target)
    for old in _exported_steps(export_dir)[:-keep_hub_module_max]:
        tf.io.gfile.rmtree(os.path.join(export_dir, str(old)))
    logging.info('Exported SavedModel to %s.', target)
    return target
