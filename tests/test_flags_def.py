"""Tests for simclr_mura.flags_def: the original's flags and defaults, flagfiles, Config conversion."""
import pathlib

import pytest
from absl import flags

from simclr_mura import config as config_lib
from simclr_mura import flags_def

# The 48 flags of google-research/simclr tf2/run.py (commit 383d414) with their types and defaults,
# transcribed from its flag definitions, independently of flags_def.
ORIGINAL_FLAGS = {
    'learning_rate': 0.3, 'learning_rate_scaling': 'linear', 'warmup_epochs': 10.0,
    'weight_decay': 1e-6, 'batch_norm_decay': 0.9, 'train_batch_size': 512, 'train_split': 'train',
    'train_epochs': 100, 'train_steps': 0, 'eval_steps': 0, 'eval_batch_size': 256,
    'checkpoint_epochs': 1, 'checkpoint_steps': 0, 'eval_split': 'validation',
    'dataset': 'imagenet2012', 'cache_dataset': False, 'mode': 'train', 'train_mode': 'pretrain',
    'lineareval_while_pretraining': True, 'checkpoint': None, 'zero_init_logits_layer': False,
    'fine_tune_after_block': -1, 'master': None, 'model_dir': None, 'data_dir': None,
    'use_tpu': True, 'tpu_name': None, 'tpu_zone': None, 'gcp_project': None, 'optimizer': 'lars',
    'momentum': 0.9, 'eval_name': None, 'keep_checkpoint_max': 5, 'keep_hub_module_max': 1,
    'temperature': 0.1, 'hidden_norm': True, 'proj_head_mode': 'nonlinear', 'proj_out_dim': 128,
    'num_proj_layers': 3, 'ft_proj_selector': 0, 'global_bn': True, 'width_multiplier': 1,
    'resnet_depth': 50, 'sk_ratio': 0.0, 'se_ratio': 0.0, 'image_size': 224,
    'color_jitter_strength': 1.0, 'use_blur': True,
}
PORT_CHANGED_DEFAULTS = {'use_tpu': False, 'dataset': 'mura/all'}
ADDED_FLAGS = {'eval_study_level': True, 'tfds_manual_dir': None, 'class_weighting': 'auto',
               'seed': None, 'deterministic': False, 'mixed_precision': 'none', 'jit_compile': False,
               'allow_random_init': False, 'baseline_weights': 'imagenet',
               'baseline_rotation_degrees': 30.0, 'baseline_plateau_decay': False,
               'baseline_plateau_split': 'validation', 'crop_min_area': 0.08,
               'positive_pairs': 'augment'}
ENUMS = {'learning_rate_scaling': ['linear', 'sqrt'], 'optimizer': ['momentum', 'adam', 'lars'],
         'mode': ['train', 'eval', 'train_then_eval'],
         'train_mode': ['pretrain', 'finetune', 'baseline'],
         'proj_head_mode': ['none', 'linear', 'nonlinear'], 'class_weighting': ['auto', 'none', 'mura'],
         'mixed_precision': ['none', 'mixed_bfloat16', 'mixed_float16'],
         'positive_pairs': ['augment', 'study_views']}


@pytest.fixture
def fv():
    flag_values = flags.FlagValues()
    flags_def.define_flags(flag_values)
    return flag_values


def _parse(fv, *args):
    fv(['run.py', *args])
    return flags_def.config_from_flags(fv)


def test_all_original_flags_with_their_defaults_and_types(fv):
    assert len(ORIGINAL_FLAGS) == 48
    expected = {**ORIGINAL_FLAGS, **PORT_CHANGED_DEFAULTS, **ADDED_FLAGS}
    defined = {name for name in fv if name not in ('flagfile', 'undefok', 'helpshort', 'helpfull',
                                                    'helpxml', 'help', '?', 'only_check_args')}
    assert defined == set(expected)
    for name, default in expected.items():
        flag = fv[name]
        assert flag.default == default, name
        if default is not None:
            assert type(flag.default) is type(default), name
    for name, values in ENUMS.items():
        assert sorted(fv[name].parser.enum_values) == sorted(values), name


def test_config_from_default_flags_equals_default_config(fv):
    assert _parse(fv) == config_lib.Config()


def test_flagfile(fv, tmp_path: pathlib.Path):
    flagfile = tmp_path / 'exp.cfg'
    flagfile.write_text('# a comment\n--train_mode=finetune\n--train_split=train_1pct\n'
                        '--resnet_depth=18\n--nouse_blur\n--learning_rate=0.1\n--model_dir=/m\n'
                        '--seed=7\n')
    config = _parse(fv, f'--flagfile={flagfile}', '--learning_rate=0.2')
    assert config.train_mode == 'finetune' and config.train_split == 'train_1pct'
    assert config.resnet_depth == 18 and config.use_blur is False and config.seed == 7
    assert config.learning_rate == 0.2  # later command-line flags override the flagfile


def test_bad_enum_value_is_rejected_by_absl(fv):
    with pytest.raises(flags.IllegalFlagValueError):
        fv(['run.py', '--train_mode=baseline_typo'])


@pytest.mark.parametrize('args,expected', [
    (['--train_mode=finetune'], '--train_mode=finetune needs --checkpoint'),
    (['--mode=eval', '--nolineareval_while_pretraining'], 'has nothing to evaluate'),
    (['--eval_name=foo'], '--eval_name is unused'),
    (['--deterministic'], '--deterministic needs --seed'),
])
def test_invalid_combinations_from_flags(fv, args, expected):
    config = _parse(fv, '--model_dir=/m', *args)
    with pytest.raises(config_lib.ConfigError, match=expected.replace('-', r'\-')):
        config_lib.validate(config)


def test_unknown_split_and_replicas_from_flags(fv):
    config = _parse(fv, '--model_dir=/m', '--train_split=train_2pct', '--train_batch_size=9')
    with pytest.raises(config_lib.ConfigError) as info:
        config_lib.validate(config, available_splits=['train', 'validation', 'test'], num_replicas=2)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "unknown split 'train_2pct'" in lines[0] and 'not divisible by the 2 replicas' in lines[1]


FLAGS_DIR = pathlib.Path(__file__).resolve().parent.parent / 'flags'


# The cpu_* flagfiles are templates the cpu grid completes (model_dir, checkpoint, data_dir);
# test_grid validates them with the grid's overrides.
@pytest.mark.parametrize('flagfile', sorted(p.name for p in FLAGS_DIR.glob('*.cfg')
                                            if not p.name.startswith('cpu_')))
def test_every_experiment_flagfile_parses_and_validates(flagfile):
    fv = flags.FlagValues()
    flags_def.define_flags(fv)
    fv(['run.py', f'--flagfile={FLAGS_DIR / flagfile}'])
    config = flags_def.config_from_flags(fv)
    config_lib.validate(config, available_splits=['train', 'validation', 'test', 'train_1pct',
                                                  'train_10pct'])
    assert config.model_dir and config.mode == 'train_then_eval'
    if config.train_mode == 'baseline':
        _check_baseline_flagfile(flagfile, config)
    elif flagfile.startswith('demo_'):
        assert config.resnet_depth == 18 and config.image_size == 64 and config.train_steps <= 200
    else:
        assert config.resnet_depth == 50 and config.image_size == 224 and not config.use_tpu
        part = flagfile[:-len('.cfg')].split('_')[-1]
        assert config.dataset == f'mura/{part}'
        if config.train_mode == 'finetune':
            assert config.checkpoint == f'runs/pretrain_{part}' and config.eval_split == 'test'


def _check_baseline_flagfile(flagfile, config):
    """Seed project settings (docs/mura.md 5.1), the MURA paper's (3), or a small CPU demo."""
    assert config.optimizer == 'adam' and config.eval_split == 'test'
    if flagfile.startswith('demo_'):
        assert config.baseline_weights == 'none' and config.image_size == 64
        assert config.train_steps <= 400 and config.dataset == 'mura/all'
        return
    name = flagfile[:-len('.cfg')]
    paper = name.endswith('_paper')
    part = name[len('baseline_'):-len('_paper') if paper else None]
    assert config.dataset == f'mura/{part}' and config.model_dir == f'runs/{name}'
    assert config.train_batch_size == 8 and config.train_split == 'train'
    assert config.baseline_weights == 'imagenet' and config.class_weighting_in_use == 'mura'
    if paper:
        assert config.learning_rate == 1e-4 and config.image_size == 320
        assert config.baseline_rotation_degrees == 30 and config.baseline_plateau_decay
    else:
        assert config.learning_rate == 2e-5 and config.image_size == 128 and config.train_epochs == 15
        assert config.baseline_rotation_degrees == 10 and config.eval_batch_size == 16
        assert not config.baseline_plateau_decay


def test_the_seed_report_experiments_all_have_a_flagfile():
    names = {p.name for p in FLAGS_DIR.glob('*.cfg')}
    for part in ('elbow', 'hand', 'shoulder', 'all'):
        assert {f'baseline_{part}.cfg', f'baseline_{part}_paper.cfg'} <= names
    assert {'demo_baseline_1pct.cfg', 'demo_baseline_10pct.cfg', 'demo_baseline_100pct.cfg'} <= names
    for part in ('elbow', 'hand', 'shoulder'):
        assert {f'pretrain_{part}.cfg', f'lineareval_{part}.cfg', f'finetune_1pct_{part}.cfg',
                f'finetune_10pct_{part}.cfg', f'finetune_100pct_{part}.cfg'} <= names
    assert {'demo_pretrain.cfg', 'demo_finetune_1pct.cfg', 'demo_finetune_10pct.cfg',
            'demo_finetune_100pct.cfg'} <= names
