"""Tests for simclr_mura.config: validation messages, one line per bad combination."""
import pytest

from simclr_mura import config as config_lib
from simclr_mura.config import Config, ConfigError, validate

SPLITS = ('train', 'validation', 'test', 'train_1pct', 'train_10pct')


def _ok(**changes):
    """A valid base config with `changes` applied."""
    return Config(model_dir='runs/x', **changes)


def _message(config, **kwargs):
    with pytest.raises(ConfigError) as info:
        validate(config, **kwargs)
    return str(info.value)


def test_defaults_are_valid():
    config = _ok()
    assert validate(config, available_splits=SPLITS, num_replicas=1) is config


def test_config_is_frozen():
    with pytest.raises(Exception):
        _ok().learning_rate = 1.0  # type: ignore[misc]


def test_finetune_without_checkpoint_is_rejected():
    msg = _message(_ok(train_mode='finetune'))
    assert '--train_mode=finetune needs --checkpoint' in msg and '--allow_random_init' in msg
    validate(_ok(train_mode='finetune', allow_random_init=True))
    validate(_ok(train_mode='finetune', checkpoint='/some/ckpt-1'))
    validate(_ok(train_mode='finetune'), resuming=True)
    validate(_ok(train_mode='finetune', mode='eval'))  # eval reads model_dir, not --checkpoint


def test_batch_not_divisible_by_replicas():
    msg = _message(_ok(train_batch_size=6, eval_batch_size=8), num_replicas=4)
    assert msg.splitlines() == [
        '--train_batch_size=6 is not divisible by the 4 replicas; use a multiple of 4']
    validate(_ok(train_batch_size=8, eval_batch_size=8), num_replicas=4)


@pytest.mark.parametrize('split', ['train', 'train_1pct', 'train[:50%]', 'train[10:20]',
                                   'train_10pct+validation', 'test[:1shard]'])
def test_known_splits_and_slices_pass(split):
    validate(_ok(train_split=split), available_splits=SPLITS)


def test_unknown_split():
    msg = _message(_ok(train_split='train_5pct', eval_split='valid[:10%]'), available_splits=SPLITS)
    lines = msg.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("--train_split=train_5pct: unknown split 'train_5pct' in mura/all")
    assert "unknown split 'valid'" in lines[1] and 'available: test, train' in lines[1]


def test_malformed_split():
    msg = _message(_ok(eval_split='train[:50%'), available_splits=SPLITS)
    assert msg.startswith('--eval_split:') and 'not a TFDS split expression' in msg


def test_eval_with_nothing_to_evaluate():
    for mode in ('eval', 'train_then_eval'):
        msg = _message(_ok(mode=mode, lineareval_while_pretraining=False))
        assert 'has nothing to evaluate' in msg
    validate(_ok(mode='train', lineareval_while_pretraining=False))


def test_unsupported_original_flags_are_rejected():
    assert '--eval_name is unused' in _message(_ok(eval_name='x'))
    assert '--keep_hub_module_max=0 must be > 0' in _message(_ok(keep_hub_module_max=0))


def test_enum_and_range_errors_are_one_line_each():
    msg = _message(_ok(optimizer='sgd', resnet_depth=42, temperature=0.0, fine_tune_after_block=7,
                       train_mode='finetune', allow_random_init=True))
    lines = msg.splitlines()
    assert len(lines) == 4
    assert '--optimizer=sgd is not one of momentum, adam, lars' in lines
    assert any(line.startswith('--resnet_depth=42 is not one of 18, 34') for line in lines)


def test_other_combinations():
    assert 'needs --seed' in _message(_ok(deterministic=True))
    validate(_ok(deterministic=True, seed=3))
    assert '--model_dir is required' in _message(Config())
    assert "this port reads the 'mura' TFDS dataset" in _message(_ok(dataset='imagenet2012'))
    assert 'applies to --train_mode=finetune only' in _message(_ok(fine_tune_after_block=4))
    assert 'cannot be evaluated' in _message(_ok(image_size=32, mode='train_then_eval'))
    validate(_ok(image_size=32, mode='train'))
    assert '--ft_proj_selector=4 must be in -4..3' in _message(_ok(ft_proj_selector=4))
    assert 'but --use_tpu=False' in _message(_ok(tpu_name='my-tpu'))


def test_tpu_needs_cloud_storage():
    message = _message(_ok(use_tpu=True, data_dir='/data/tfds'))
    assert message.splitlines() == [
        '--use_tpu needs --data_dir on cloud storage (gs://bucket/...): TPU hosts read and write only '
        'cloud storage, got --data_dir=/data/tfds',
        '--use_tpu needs --model_dir on cloud storage (gs://bucket/...): TPU hosts read and write only '
        'cloud storage, got --model_dir=runs/x']
    assert 'got --data_dir unset' in _message(Config(use_tpu=True, model_dir='gs://b/run'))
    assert '--model_dir=file:///runs' in _message(
        Config(use_tpu=True, model_dir='file:///runs', data_dir='gs://b/tfds'))
    validate(Config(use_tpu=True, model_dir='gs://b/run', data_dir='gs://b/tfds'))
    assert '--class_weighting=mura weights' in _message(
        _ok(class_weighting='mura', lineareval_while_pretraining=False))


def _baseline(**changes):
    values = dict(train_mode='baseline', optimizer='adam', baseline_weights='none')
    values.update(changes)
    return _ok(**values)


def test_baseline_settings():
    validate(_baseline(), available_splits=SPLITS, num_replicas=1)
    # Evaluation is a plain resize, so small images can be evaluated (unlike SimCLR's CIFAR path).
    validate(_baseline(image_size=32, mode='train_then_eval'))
    msg = _message(_baseline(optimizer='lars', checkpoint='runs/x/ckpt-3', fine_tune_after_block=4,
                             baseline_rotation_degrees=200))
    lines = msg.splitlines()
    assert len(lines) == 4
    assert '--train_mode=baseline trains with Adam as the MURA paper; pass --optimizer=adam' in lines[0]
    assert '--fine_tune_after_block=4 applies to --train_mode=finetune only' in lines[1]
    assert lines[2].endswith('pass the initial weights as --baseline_weights=runs/x/ckpt-3')
    assert lines[3].startswith('--baseline_rotation_degrees=200 must be in 0..180')


def test_baseline_weights_path_must_exist_when_training_from_scratch(tmp_path):
    missing = str(tmp_path / 'densenet.h5')
    assert 'no such file, directory or checkpoint' in _message(_baseline(baseline_weights=missing))
    validate(_baseline(baseline_weights=missing), resuming=True)  # model_dir's checkpoint is used
    validate(_baseline(baseline_weights=missing, mode='eval'))
    (tmp_path / 'densenet.h5').write_bytes(b'')
    validate(_baseline(baseline_weights=missing))
    (tmp_path / 'ckpt-5.index').write_bytes(b'')
    validate(_baseline(baseline_weights=str(tmp_path / 'ckpt-5')))  # a checkpoint prefix
    validate(_baseline(baseline_weights='imagenet'))


def test_baseline_plateau_split_and_flag_outside_baseline():
    assert '--baseline_plateau_decay applies to --train_mode=baseline only' in _message(
        _ok(baseline_plateau_decay=True))
    msg = _message(_baseline(baseline_plateau_decay=True, baseline_plateau_split='valid'),
                   available_splits=SPLITS)
    assert msg.startswith("--baseline_plateau_split=valid: unknown split 'valid'")
    # Only checked when the plateau decay is on.
    validate(_baseline(baseline_plateau_split='valid'), available_splits=SPLITS)


def test_class_weighting_auto_is_mura_for_the_baseline_only():
    assert _baseline().class_weighting_in_use == 'mura'
    assert _baseline(class_weighting='none').class_weighting_in_use == 'none'
    assert _ok(train_mode='finetune').class_weighting_in_use == 'none'
    assert _ok(train_mode='finetune', class_weighting='mura').class_weighting_in_use == 'mura'
    validate(_ok(lineareval_while_pretraining=False))  # auto: nothing to weight, no error


def test_split_names():
    assert config_lib.split_names('train[:50%]+validation') == ['train', 'validation']
    with pytest.raises(ConfigError):
        config_lib.split_names('train]')


def test_to_dict_and_replace():
    c = _ok()
    d = c.to_dict()
    assert d['resnet_depth'] == 50 and d['model_dir'] == 'runs/x'
    assert c.replace(resnet_depth=18).resnet_depth == 18 and c.resnet_depth == 50
    assert c.has_supervised_head and not c.replace(lineareval_while_pretraining=False).has_supervised_head


def test_crop_min_area_range():
    validate(_ok(crop_min_area=0.5))
    validate(_ok(crop_min_area=1.0))
    for bad in (0.0, -0.1, 1.5):
        message = _message(_ok(crop_min_area=bad))
        assert message == (f'--crop_min_area={bad} must be in (0, 1]: the smallest share of the '
                           'image a training crop keeps (the original uses 0.08)')
