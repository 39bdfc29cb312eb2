"""The absl flags of `run.py`, and their conversion into a `Config`.

This is the only module that reads absl FLAGS. The flags are those of the original SimCLR TF2
`run.py` (same names, types and defaults) except `--use_tpu` (default False, so a GPU user does not
fall into the TPU path) and `--dataset` (default 'mura/all'), plus the port's own flags listed under
"Added by the port". `--flagfile=FILE` works as for every absl program.
"""
from typing import Optional

from absl import flags

from simclr_mura import config as config_lib


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every flag on `flag_values` (the global FLAGS by default; tests pass a fresh one)."""
    fv = dict(flag_values=flag_values)
    # Optimisation.
    flags.DEFINE_float('learning_rate', 0.3, 'Base learning rate for a batch of 256 '
                       '(scaled by --learning_rate_scaling).', **fv)
    flags.DEFINE_enum('learning_rate_scaling', 'linear', list(config_lib.LEARNING_RATE_SCALINGS),
                      'Learning-rate scaling with the batch size B: linear = lr*B/256, sqrt = lr*sqrt(B).',
                      **fv)
    flags.DEFINE_float('warmup_epochs', 10, 'Epochs of linear learning-rate warm-up.', **fv)
    flags.DEFINE_float('weight_decay', 1e-6, 'Weight decay (inside LARS, or an L2 term added to the loss).',
                       **fv)
    flags.DEFINE_float('batch_norm_decay', 0.9, 'Batch-norm moving-average momentum.', **fv)
    flags.DEFINE_integer('train_batch_size', 512, 'Global training batch size (all replicas).', **fv)
    flags.DEFINE_integer('train_epochs', 100, 'Training epochs (ignored when --train_steps > 0).', **fv)
    flags.DEFINE_integer('train_steps', 0, 'Training steps; 0 derives them from --train_epochs.', **fv)
    flags.DEFINE_enum('optimizer', 'lars', list(config_lib.OPTIMIZERS),
                      'Optimizer: lars, momentum (SGD with Nesterov) or adam.', **fv)
    flags.DEFINE_float('momentum', 0.9, 'Momentum of LARS and SGD.', **fv)
    # Data.
    flags.DEFINE_string('dataset', 'mura/all', "TFDS dataset: 'mura/all' or 'mura/<body part>'.", **fv)
    flags.DEFINE_string('data_dir', None, 'TFDS data directory (default: TFDS_DATA_DIR or '
                        '~/tensorflow_datasets).', **fv)
    flags.DEFINE_string('train_split', 'train', 'TFDS split for training: train, train_1pct, '
                        'train_10pct, or a slice such as train[:50%].', **fv)
    flags.DEFINE_string('eval_split', 'validation', 'TFDS split for evaluation (validation or test).',
                        **fv)
    flags.DEFINE_bool('cache_dataset', False, 'Cache the decoded split in memory (small datasets only).',
                      **fv)
    flags.DEFINE_integer('image_size', 224, 'Input size; <= 32 selects the CIFAR stem and skips the eval '
                         'crop, as in the original.', **fv)
    flags.DEFINE_float('color_jitter_strength', 1.0, 'Colour-jitter strength during pretraining.', **fv)
    flags.DEFINE_bool('use_blur', True, 'Random Gaussian blur of each view during pretraining.', **fv)
    # Evaluation and checkpoints.
    flags.DEFINE_integer('eval_steps', 0, 'Eval batches; 0 evaluates the whole split.', **fv)
    flags.DEFINE_integer('eval_batch_size', 256, 'Global eval batch size.', **fv)
    flags.DEFINE_integer('checkpoint_epochs', 1, 'Epochs between checkpoints and summaries.', **fv)
    flags.DEFINE_integer('checkpoint_steps', 0, 'Steps between checkpoints and summaries (overrides '
                         '--checkpoint_epochs when > 0); also the steps per compiled training loop.', **fv)
    flags.DEFINE_integer('keep_checkpoint_max', 5, 'Number of training checkpoints kept.', **fv)
    flags.DEFINE_integer('keep_hub_module_max', 1, 'Number of exported SavedModels kept.', **fv)
    flags.DEFINE_string('eval_name', None, 'Unused by the original TF2 code; rejected if set.', **fv)
    # What to run.
    flags.DEFINE_enum('mode', 'train', list(config_lib.MODES), 'train, eval or train_then_eval.', **fv)
    flags.DEFINE_enum('train_mode', 'pretrain', list(config_lib.TRAIN_MODES),
                      'pretrain (contrastive), finetune (supervised) or baseline (supervised '
                      'DenseNet-169, the MURA paper\'s model; see the --baseline_* flags).', **fv)
    flags.DEFINE_bool('lineareval_while_pretraining', True, 'Train a linear head on stop-gradient '
                      'features while pretraining.', **fv)
    flags.DEFINE_string('checkpoint', None, 'Initial weights when --model_dir has no checkpoint: a '
                        'checkpoint prefix, a directory with checkpoints, or a SavedModel directory.', **fv)
    flags.DEFINE_bool('zero_init_logits_layer', False, 'Zero the supervised head after loading '
                      '--checkpoint (a no-op in the original; implemented here).', **fv)
    flags.DEFINE_integer('fine_tune_after_block', -1, 'Fine-tuning: -1 trains everything; k in 0..4 '
                         'freezes the stem and block groups 1..k (4 = linear eval).', **fv)
    flags.DEFINE_string('model_dir', None, 'Directory for checkpoints, summaries, results and exports.',
                        **fv)
    # Hardware.
    flags.DEFINE_string('master', None, 'TPU master address (fallback when --tpu_name is unset).', **fv)
    flags.DEFINE_bool('use_tpu', False, 'Train on a TPU (TPUStrategy).', **fv)
    flags.DEFINE_string('tpu_name', None, 'TPU name for the cluster resolver.', **fv)
    flags.DEFINE_string('tpu_zone', None, 'GCE zone of the TPU.', **fv)
    flags.DEFINE_string('gcp_project', None, 'GCP project of the TPU.', **fv)
    # Model.
    flags.DEFINE_float('temperature', 0.1, 'Temperature of the contrastive loss.', **fv)
    flags.DEFINE_bool('hidden_norm', True, 'L2-normalise the projections before the contrastive loss.',
                      **fv)
    flags.DEFINE_enum('proj_head_mode', 'nonlinear', list(config_lib.PROJ_HEAD_MODES),
                      'Projection head: none, linear or nonlinear.', **fv)
    flags.DEFINE_integer('proj_out_dim', 128, 'Projection output dimension.', **fv)
    flags.DEFINE_integer('num_proj_layers', 3, 'Layers of the nonlinear projection head.', **fv)
    flags.DEFINE_integer('ft_proj_selector', 0, 'Which projection-head layer feeds the supervised head: '
                         '0 = head input (ResNet output), -1 = last layer.', **fv)
    flags.DEFINE_bool('global_bn', True, 'Synchronise batch norm across replicas.', **fv)
    flags.DEFINE_integer('width_multiplier', 1, 'ResNet width multiplier.', **fv)
    flags.DEFINE_integer('resnet_depth', 50, 'ResNet depth: 18, 34, 50, 101, 152 or 200.', **fv)
    flags.DEFINE_float('sk_ratio', 0.0, 'Selective-kernel ratio; > 0 enables SK convs and a ResNet-D '
                       'stem (0.0625 recommended).', **fv)
    flags.DEFINE_float('se_ratio', 0.0, 'Squeeze-and-excitation ratio; > 0 enables SE.', **fv)
    # Added by the port.
    flags.DEFINE_bool('eval_study_level', True, 'Also report study-level metrics (mean of the study\'s '
                      'image probabilities, abnormal if > 0.5, as the MURA paper).', **fv)
    flags.DEFINE_string('tfds_manual_dir', None, 'Folder holding MURA-v1.1 (or its zip); builds the '
                        'dataset on first use when it is not built yet.', **fv)
    flags.DEFINE_enum('class_weighting', 'auto', list(config_lib.CLASS_WEIGHTINGS),
                      "Supervised-loss class weights: mura (the MURA paper's per-body-part weights "
                      'from the image counts of --train_split: abnormal images weighted by the normal '
                      'fraction, normal ones by the abnormal fraction), none, or auto (mura for '
                      '--train_mode=baseline, none otherwise).', **fv)
    flags.DEFINE_integer('seed', None, 'Random seed for Python, NumPy and TensorFlow; also makes the '
                         'training input order reproducible, so a resumed run continues it.', **fv)
    flags.DEFINE_bool('deterministic', False, 'Deterministic ops and input order for exact reruns '
                      '(needs --seed; slower).', **fv)
    flags.DEFINE_enum('mixed_precision', 'none', list(config_lib.MIXED_PRECISION_POLICIES),
                      'Keras mixed-precision policy.', **fv)
    flags.DEFINE_bool('jit_compile', False, 'Compile the training step with XLA.', **fv)
    flags.DEFINE_float('crop_min_area', 0.08, 'Smallest share of the image a SimCLR training crop '
                       'keeps (random resized crop area range [crop_min_area, 1]; the original: 0.08).',
                       **fv)
    flags.DEFINE_enum('positive_pairs', 'augment', list(config_lib.POSITIVE_PAIRS),
                      'Positive pairs of pretraining: augment (two augmentations of one image, the '
                      'original) or study_views (two different images of one study, MICLe; a '
                      'one-image study gives two augmentations of its image).', **fv)
    flags.DEFINE_bool('allow_random_init', False, 'Allow --train_mode=finetune without --checkpoint '
                      '(trains from random weights).', **fv)
    # Added by the port for --train_mode=baseline. The baseline trains with Adam (--optimizer=adam)
    # at the constant --learning_rate (no batch scaling, warm-up or cosine decay).
    flags.DEFINE_string('baseline_weights', 'imagenet', 'Initial DenseNet-169 weights: none (random), '
                        "imagenet (Keras' ImageNet weights, downloaded on first use), or a path: a "
                        'DenseNet-169 (no top) weights .h5 file, or a baseline checkpoint prefix, '
                        'directory or SavedModel.', **fv)
    flags.DEFINE_float('baseline_rotation_degrees', 30.0, 'Random rotation range (+-degrees) of the '
                       'baseline training augmentation (paper 30, seed project 10).', **fv)
    flags.DEFINE_bool('baseline_plateau_decay', False, 'Divide the learning rate by 10 when the '
                      'validation loss (weighted BCE on --baseline_plateau_split) does not improve '
                      'over an epoch, as the MURA paper.', **fv)
    flags.DEFINE_string('baseline_plateau_split', 'validation', 'Split whose loss drives '
                        '--baseline_plateau_decay (evaluated after every epoch).', **fv)


def config_from_flags(flag_values: Optional[flags.FlagValues] = None) -> config_lib.Config:
    """Builds a `Config` from parsed flags (the global FLAGS by default). Does not validate it."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    values = {}
    for field in config_lib.Config.__dataclass_fields__:
        values[field] = getattr(flag_values, field)
    return config_lib.Config(**values)
