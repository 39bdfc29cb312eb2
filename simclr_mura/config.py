"""Every run setting as one frozen dataclass, plus validation of bad combinations.

`Config` holds the 48 settings of the original SimCLR TF2 `run.py` (same names and meanings) and the
settings this port adds. It is built by `flags_def.config_from_flags` (the only place that reads absl
FLAGS) or directly in tests, and passed down explicitly.

`validate` checks the settings and raises `ConfigError` whose message has one line per bad
combination, each saying what is wrong and what to do. Checks that need the dataset (split names) or
the distribution strategy (replica count) run only when that information is passed in, so `main`
calls `validate` once at start-up and again once the dataset and strategy are known.
"""
import dataclasses
import re
from typing import Any, Collection, Dict, List, Optional

# Enumerations. The train modes are a tuple so that new ones are added in one place; `flags_def`
# builds its enum flag from it. 'baseline' is the supervised DenseNet-169 of `densenet.py`;
# each train mode has a recipe in `recipes/`.
MODES = ('train', 'eval', 'train_then_eval')
# The train modes of the SimCLR model (`model.Model`), then the DenseNet-169 baseline.
SIMCLR_TRAIN_MODES = ('pretrain', 'finetune')
TRAIN_MODES = SIMCLR_TRAIN_MODES + ('baseline',)
LEARNING_RATE_SCALINGS = ('linear', 'sqrt')
OPTIMIZERS = ('momentum', 'adam', 'lars')
PROJ_HEAD_MODES = ('none', 'linear', 'nonlinear')
RESNET_DEPTHS = (18, 34, 50, 101, 152, 200)
# 'auto': the MURA paper's weights ('mura') for the baseline, none for SimCLR (as the original).
CLASS_WEIGHTINGS = ('auto', 'none', 'mura')
# What a contrastive positive pair is: two augmentations of one image (the original) or two images
# of one study (MICLe, simclr_mura/study_pairs.py).
POSITIVE_PAIRS = ('augment', 'study_views')
# --baseline_weights values other than a path.
BASELINE_WEIGHTS = ('none', 'imagenet')
MIXED_PRECISION_POLICIES = ('none', 'mixed_bfloat16', 'mixed_float16')

# `image_size <= 32` switches the original to its CIFAR path (no eval crop or resize).
CIFAR_IMAGE_SIZE = 32

# A TFDS split expression: one or more `name` or `name[slice]` terms joined by '+'.
_SPLIT_TERM = re.compile(r'^\s*([A-Za-z][A-Za-z0-9_]*)\s*(\[[^\]]*\])?\s*$')


class ConfigError(ValueError):
    """A setting, or a combination of settings, that cannot run. One line per problem."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if empty), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclasses.dataclass(frozen=True)
class Config:
    """All settings of one run. Field names equal the absl flag names."""

    # Optimisation (original flags).
    learning_rate: float = 0.3
    learning_rate_scaling: str = 'linear'
    warmup_epochs: float = 10.0
    weight_decay: float = 1e-6
    batch_norm_decay: float = 0.9
    train_batch_size: int = 512
    train_epochs: int = 100
    train_steps: int = 0
    optimizer: str = 'lars'
    momentum: float = 0.9
    # Data (original flags; the dataset default is the port's).
    dataset: str = 'mura/all'
    data_dir: Optional[str] = None
    train_split: str = 'train'
    eval_split: str = 'validation'
    cache_dataset: bool = False
    image_size: int = 224
    color_jitter_strength: float = 1.0
    use_blur: bool = True
    # Evaluation and checkpoints (original flags).
    eval_steps: int = 0
    eval_batch_size: int = 256
    checkpoint_epochs: int = 1
    checkpoint_steps: int = 0
    keep_checkpoint_max: int = 5
    keep_hub_module_max: int = 1
    eval_name: Optional[str] = None
    # What to run (original flags).
    mode: str = 'train'
    train_mode: str = 'pretrain'
    lineareval_while_pretraining: bool = True
    checkpoint: Optional[str] = None
    zero_init_logits_layer: bool = False
    fine_tune_after_block: int = -1
    model_dir: Optional[str] = None
    # Hardware (original flags; use_tpu defaults to False in the port).
    master: Optional[str] = None
    use_tpu: bool = False
    tpu_name: Optional[str] = None
    tpu_zone: Optional[str] = None
    gcp_project: Optional[str] = None
    # Model (original flags).
    temperature: float = 0.1
    hidden_norm: bool = True
    proj_head_mode: str = 'nonlinear'
    proj_out_dim: int = 128
    num_proj_layers: int = 3
    ft_proj_selector: int = 0
    global_bn: bool = True
    width_multiplier: int = 1
    resnet_depth: int = 50
    sk_ratio: float = 0.0
    se_ratio: float = 0.0
    # Added by the port.
    eval_study_level: bool = True
    tfds_manual_dir: Optional[str] = None
    class_weighting: str = 'auto'
    seed: Optional[int] = None
    deterministic: bool = False
    mixed_precision: str = 'none'
    jit_compile: bool = False
    allow_random_init: bool = False
    # Smallest share of the image a SimCLR training crop keeps (the original's 0.08, tuned for
    # ImageNet; radiographs whose sign is small may want larger crops, docs/learning.md).
    crop_min_area: float = 0.08
    # Positive pairs of pretraining: 'augment' (the original) or 'study_views' (MICLe).
    positive_pairs: str = 'augment'
    # Added by the port for --train_mode=baseline (see densenet.py).
    baseline_weights: str = 'imagenet'
    baseline_rotation_degrees: float = 30.0
    baseline_plateau_decay: bool = False
    baseline_plateau_split: str = 'validation'

    def to_dict(self) -> Dict[str, Any]:
        """All settings as a JSON-serialisable dict (what `flags.json` holds)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> 'Config':
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)

    @property
    def split_flags(self) -> List[str]:
        """Names of the settings that hold a TFDS split this run reads."""
        flags = ['train_split', 'eval_split']
        if self.train_mode == 'baseline' and self.baseline_plateau_decay:
            flags.append('baseline_plateau_split')
        return flags

    @property
    def has_supervised_head(self) -> bool:
        """Whether the model has a supervised (classification) head, as in the original."""
        return self.train_mode != 'pretrain' or self.lineareval_while_pretraining

    @property
    def class_weighting_in_use(self) -> str:
        """'mura' or 'none': `class_weighting` with 'auto' resolved by the train mode."""
        if self.class_weighting == 'auto':
            return 'mura' if self.train_mode == 'baseline' else 'none'
        return self.class_weighting

    @property
    def is_cifar_size(self) -> bool:
        """The original's small-image path: CIFAR stem, no eval crop, larger shuffle buffer."""
        return self.image_size <= CIFAR_IMAGE_SIZE


def split_names(split: str) -> List[str]:
    """Base split names of a TFDS split expression, e.g. 'train[:50%]+validation' -> [train, validation].

    Raises:
      ConfigError: the expression is not `name`, `name[slice]` or a '+' union of those.
    """
    names = []
    for term in split.split('+'):
        match = _SPLIT_TERM.match(term)
        if not match:
            raise ConfigError(f'split {split!r} is not a TFDS split expression '
                              "(examples: 'train', 'train[:50%]', 'train_1pct+validation')")
        names.append(match.group(1))
    return names


def _check_enums(c: Config) -> List[str]:
    enums = [('mode', MODES), ('train_mode', TRAIN_MODES),
             ('learning_rate_scaling', LEARNING_RATE_SCALINGS), ('optimizer', OPTIMIZERS),
             ('proj_head_mode', PROJ_HEAD_MODES), ('resnet_depth', RESNET_DEPTHS),
             ('class_weighting', CLASS_WEIGHTINGS), ('mixed_precision', MIXED_PRECISION_POLICIES),
             ('positive_pairs', POSITIVE_PAIRS)]
    errors = []
    for name, allowed in enums:
        value = getattr(c, name)
        if value not in allowed:
            errors.append(f'--{name}={value} is not one of {", ".join(map(str, allowed))}')
    return errors


def _check_ranges(c: Config) -> List[str]:
    positive = ['train_batch_size', 'eval_batch_size', 'image_size', 'keep_checkpoint_max',
                'keep_hub_module_max', 'width_multiplier', 'proj_out_dim']
    non_negative = ['train_steps', 'eval_steps', 'checkpoint_steps', 'warmup_epochs', 'weight_decay',
                    'learning_rate', 'momentum', 'sk_ratio', 'se_ratio', 'color_jitter_strength',
                    'num_proj_layers']
    errors = [f'--{n}={getattr(c, n)} must be > 0' for n in positive if getattr(c, n) <= 0]
    errors += [f'--{n}={getattr(c, n)} must be >= 0' for n in non_negative if getattr(c, n) < 0]
    if c.train_steps == 0 and c.train_epochs <= 0:
        errors.append(f'--train_epochs={c.train_epochs} must be > 0 when --train_steps=0')
    if c.checkpoint_steps == 0 and c.checkpoint_epochs <= 0:
        errors.append(f'--checkpoint_epochs={c.checkpoint_epochs} must be > 0 when --checkpoint_steps=0')
    if c.temperature <= 0:
        errors.append(f'--temperature={c.temperature} must be > 0')
    if not 0.0 < c.crop_min_area <= 1.0:
        errors.append(f'--crop_min_area={c.crop_min_area} must be in (0, 1]: the smallest share of '
                      'the image a training crop keeps (the original uses 0.08)')
    if not 0.0 < c.batch_norm_decay < 1.0:
        errors.append(f'--batch_norm_decay={c.batch_norm_decay} must be in (0, 1)')
    if not -1 <= c.fine_tune_after_block <= 4:
        errors.append(f'--fine_tune_after_block={c.fine_tune_after_block} must be in -1..4 '
                      '(-1 trains everything, 4 trains only the head)')
    num_hiddens = c.num_proj_layers + 1  # [head input, layer 1 output, ..., layer L output]
    if not -num_hiddens <= c.ft_proj_selector < num_hiddens:
        errors.append(f'--ft_proj_selector={c.ft_proj_selector} must be in '
                      f'{-num_hiddens}..{num_hiddens - 1} with --num_proj_layers={c.num_proj_layers}')
    return errors


def is_local_path(path: str) -> bool:
    """Whether `path` is on a local file system (no URL scheme, or file://), not e.g. gs://."""
    scheme, sep, _ = path.partition('://')
    return not sep or scheme == 'file'


def _check_combinations(c: Config, resuming: bool) -> List[str]:
    errors = []
    training = c.mode in ('train', 'train_then_eval')
    evaluating = c.mode in ('eval', 'train_then_eval')
    if not c.model_dir:
        errors.append('--model_dir is required: it holds checkpoints, summaries and results')
    if c.dataset.split('/')[0] != 'mura':
        errors.append(f"--dataset={c.dataset} is not supported: this port reads the 'mura' TFDS dataset "
                      "('mura/all' or 'mura/<body part>', e.g. 'mura/elbow')")
    if (training and c.train_mode == 'finetune' and not c.checkpoint and not resuming
            and not c.allow_random_init):
        errors.append('--train_mode=finetune needs --checkpoint (a pretraining checkpoint prefix, '
                      'directory or SavedModel); pass --allow_random_init to train from scratch on purpose')
    if evaluating and not c.has_supervised_head:
        errors.append(f'--mode={c.mode} with --train_mode=pretrain and --lineareval_while_pretraining=False '
                      'has nothing to evaluate (no supervised head); use --mode=train or turn linear eval on')
    if c.train_mode == 'pretrain' and c.fine_tune_after_block != -1:
        errors.append(f'--fine_tune_after_block={c.fine_tune_after_block} applies to --train_mode=finetune '
                      'only; pretraining trains every block (use -1)')
    if evaluating and c.is_cifar_size and c.train_mode != 'baseline':
        errors.append(f'--image_size={c.image_size} (<= {CIFAR_IMAGE_SIZE}) makes evaluation skip the centre '
                      'crop and resize, as in the original CIFAR path, so variable-size radiographs cannot '
                      f'be evaluated; use --image_size > {CIFAR_IMAGE_SIZE} or --mode=train')
    if c.eval_name is not None:
        errors.append('--eval_name is unused by the original SimCLR TF2 code and not supported here; '
                      'remove it (results go to result_<step>.json in --model_dir)')
    if c.positive_pairs != 'augment' and c.train_mode != 'pretrain':
        errors.append(f'--positive_pairs={c.positive_pairs} chooses the pairs of contrastive '
                      f'pretraining; --train_mode={c.train_mode} has none (use --train_mode=pretrain '
                      'or drop the flag)')
    if c.deterministic and c.seed is None:
        errors.append('--deterministic needs --seed (op determinism requires fixed random seeds)')
    if c.class_weighting_in_use != 'none' and not c.has_supervised_head:
        errors.append(f'--class_weighting={c.class_weighting} weights the supervised loss, which pretraining '
                      'without --lineareval_while_pretraining does not have; use --class_weighting=none')
    if c.use_tpu and c.mixed_precision == 'mixed_float16':
        errors.append('--mixed_precision=mixed_float16 is for GPUs; on TPU use mixed_bfloat16')
    if c.use_tpu:
        for flag in ('data_dir', 'model_dir'):
            path = getattr(c, flag)
            if path is not None and not is_local_path(path):
                continue
            shown = f'={path}' if path else ' unset (the default is a local directory)'
            errors.append(f'--use_tpu needs --{flag} on cloud storage (gs://bucket/...): TPU hosts '
                          f'read and write only cloud storage, got --{flag}{shown}')
    if not c.use_tpu and (c.tpu_name or c.tpu_zone or c.gcp_project):
        errors.append('--tpu_name/--tpu_zone/--gcp_project are set but --use_tpu=False; '
                      'pass --use_tpu to train on a TPU, or remove them')
    return errors


def _check_baseline(c: Config, resuming: bool) -> List[str]:
    """Settings of --train_mode=baseline, and baseline flags used outside it."""
    if c.train_mode != 'baseline':
        if c.baseline_plateau_decay:
            return ['--baseline_plateau_decay applies to --train_mode=baseline only; remove it']
        return []
    errors = []
    if c.optimizer != 'adam':
        errors.append(f'--train_mode=baseline trains with Adam as the MURA paper; pass --optimizer=adam '
                      f'(got --optimizer={c.optimizer})')
    if c.fine_tune_after_block != -1:
        errors.append(f'--fine_tune_after_block={c.fine_tune_after_block} applies to --train_mode=finetune '
                      'only; the baseline trains the whole DenseNet-169 (use -1)')
    if c.checkpoint:
        errors.append('--checkpoint is not used by --train_mode=baseline; pass the initial weights as '
                      f'--baseline_weights={c.checkpoint}')
    if not 0 <= c.baseline_rotation_degrees <= 180:
        errors.append(f'--baseline_rotation_degrees={c.baseline_rotation_degrees} must be in 0..180 '
                      '(the paper uses 30, the seed project 10)')
    training = c.mode in ('train', 'train_then_eval')
    weights = c.baseline_weights
    if (training and not resuming and weights not in BASELINE_WEIGHTS
            and not (_exists(weights) or _exists(weights + '.index'))):
        errors.append(f'--baseline_weights={weights}: no such file, directory or checkpoint; pass none, '
                      'imagenet, a DenseNet-169 weights file (.h5) or a baseline checkpoint')
    return errors


def _exists(path: str) -> bool:
    # tf.io.gfile also reads cloud storage; imported here so that config stays light to import.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return bool(tf.io.gfile.exists(path))


def _check_splits(c: Config, available_splits: Collection[str]) -> List[str]:
    errors = []
    known = ', '.join(sorted(available_splits))
    for flag in c.split_flags:
        value = getattr(c, flag)
        try:
            names = split_names(value)
        except ConfigError as e:
            errors.append(f'--{flag}: {e}')
            continue
        unknown = [n for n in names if n not in available_splits]
        if unknown:
            errors.append(f'--{flag}={value}: unknown split {unknown[0]!r} in {c.dataset} '
                          f'(available: {known})')
    return errors


def _check_replicas(c: Config, num_replicas: int) -> List[str]:
    errors = []
    for flag in ('train_batch_size', 'eval_batch_size'):
        value = getattr(c, flag)
        if value > 0 and value % num_replicas:
            errors.append(f'--{flag}={value} is not divisible by the {num_replicas} replicas; '
                          f'use a multiple of {num_replicas}')
    return errors


def validate(config: Config, *, available_splits: Optional[Collection[str]] = None,
             num_replicas: Optional[int] = None, resuming: bool = False) -> Config:
    """Checks `config`; returns it unchanged or raises `ConfigError` listing every problem.

    Args:
      config: the settings to check.
      available_splits: base split names the dataset offers (e.g. train, validation, test,
        train_1pct, train_10pct); when given, `train_split` and `eval_split` (slices and '+'
        unions allowed) are checked against them.
      num_replicas: replicas in sync of the distribution strategy; when given, the batch sizes
        must be divisible by it.
      resuming: `model_dir` already holds a checkpoint, so fine-tuning resumes from it and does not
        need `--checkpoint`.

    Raises:
      ConfigError: one line per bad setting or combination.
    """
    errors = (_check_enums(config) + _check_ranges(config) + _check_combinations(config, resuming)
              + _check_baseline(config, resuming))
    if available_splits is not None:
        errors += _check_splits(config, available_splits)
    if num_replicas is not None:
        errors += _check_replicas(config, num_replicas)
    if errors:
        raise ConfigError('\n'.join(errors))
    return config
