"""Tests for simclr_mura.fidelity.model_checks against the original's fixtures and unseen configs."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from simclr_mura.fidelity import model_checks as fm

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'official')
MANIFESTS = sorted(glob.glob(os.path.join(FIXTURES, 'ckpt_manifest_*.txt')))


def _failures(rows):
    return [row for row in rows if not row[3]]


def test_fixture_manifests_are_all_present():
    assert [os.path.basename(p) for p in MANIFESTS] == [
        'ckpt_manifest_r18_1x_sk0.txt', 'ckpt_manifest_r18_train.txt',
        'ckpt_manifest_r50_1x_sk0.0625.txt', 'ckpt_manifest_r50_1x_sk0.txt']


@pytest.mark.parametrize('path', MANIFESTS, ids=os.path.basename)
def test_checkpoint_keys_and_shapes_match_the_original(path):
    rows = fm.check_manifest(path)
    assert len(rows) == 3 and not _failures(rows), rows


def test_forward_outputs_match_the_original():
    rows = fm.check_forward(os.path.join(FIXTURES, 'forward.npz'))
    assert not _failures(rows), _failures(rows)
    with np.load(os.path.join(FIXTURES, 'forward.npz')) as data:
        compared = {row[0].split(' ')[0] for row in rows}
        stored = {k for k in data.files if '__' in k and not k.endswith('__weight_keys')}
        assert stored <= compared  # every stored array was compared
    # The fixture tolerance is 1e-4; the port is about 30x closer than that.
    worst = max(row[1] for row in rows if 'weight' not in row[0])
    assert worst < 2e-5


def test_config_names_are_parsed():
    assert fm.parse_config_name('r101_2x_sk0.0625') == dict(
        resnet_depth=101, width_multiplier=2, sk_ratio=0.0625)
    assert fm.parse_config_name('r18') == dict(resnet_depth=18, width_multiplier=1, sk_ratio=0.0)
    with pytest.raises(ValueError, match='r<depth>'):
        fm.parse_config_name('resnet50')
    with pytest.raises(ValueError, match='ckpt_manifest_r50_1x_sk0.0625.txt'):
        fm.check_manifest('ckpt_manifest_resnet.txt')


def test_rule_value_follows_the_readme():
    key = 'model/x/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE'
    value = fm.rule_value(key, [4, 3])
    assert value.dtype == np.float32 and value.shape == (4, 3)
    fresh = np.random.default_rng(__import__('zlib').crc32(key.encode()))
    np.testing.assert_array_equal(value, (fresh.standard_normal((4, 3)) * 0.5).astype(np.float32))
    with pytest.raises(ValueError, match='no case'):
        fm.rule_value('model/x/unknown/.ATTRIBUTES/VARIABLE_VALUE', [2])


# An unseen configuration: R18 with SK blocks, SE, the CIFAR stem, 3 classes, 2-layer head.
UNSEEN = dict(resnet_depth=18, width_multiplier=1, sk_ratio=0.0625, se_ratio=0.25,
              num_classes=3, num_proj_layers=2, proj_out_dim=16, train_mode='pretrain',
              lineareval_while_pretraining=True, proj_head_mode='nonlinear')


def _write_manifest(path, shapes):
    with open(path, 'w', encoding='utf-8') as f:
        for key in sorted(shapes):
            f.write(f'{key}\t[{", ".join(str(d) for d in shapes[key])}]\n')


def test_manifest_of_an_unseen_configuration(tmp_path):
    model = fm.build_model(UNSEEN, image_size=32)
    shapes = fm.checkpoint_shapes(tf.train.Checkpoint(model=model))
    path = tmp_path / 'ckpt_manifest_r18_1x_sk0.0625.txt'
    _write_manifest(path, shapes)
    rows = fm.check_manifest(str(path))
    assert not _failures(rows), rows
    # A different width in the file name, or one changed shape, is caught.
    _write_manifest(tmp_path / 'ckpt_manifest_r18_2x_sk0.0625.txt', shapes)
    assert _failures(fm.check_manifest(str(tmp_path / 'ckpt_manifest_r18_2x_sk0.0625.txt')))
    head = 'model/supervised_head/linear_layer/dense/bias/.ATTRIBUTES/VARIABLE_VALUE'
    _write_manifest(path, dict(shapes, **{head: [4]}))
    failed = _failures(fm.check_manifest(str(path)))
    assert [row[0].split(':')[1].split('(')[0].strip() for row in failed] == ['shape mismatches']


def test_forward_file_of_an_unseen_configuration(tmp_path):
    model = fm.build_model(UNSEEN, image_size=32)
    values = fm.assign_rule_weights(model)
    rng = np.random.default_rng(5)
    views = [rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32) for _ in range(2)]
    arrays = fm.forward_arrays(model, np.concatenate(views, -1))
    cfg = 'r18_1x_sk0.0625'
    keys = sorted(values)
    data = {f'{cfg}__{k}': v for k, v in arrays.items()}
    data.update({f'{cfg}__weight_keys': np.array(keys),
                 f'{cfg}__weight_sums': np.array([values[k].sum(dtype=np.float64) for k in keys]),
                 f'{cfg}__weight_first': np.array([values[k].flat[0] for k in keys]),
                 'input_view1': views[0], 'input_view2': views[1],
                 'image_size': np.array(32, np.int32)})
    assert f'{cfg}__logits_sup_ft_proj_selector1' in data and f'{cfg}__block_group4_mean' in data
    np.savez(tmp_path / 'forward.npz', **data)
    rows = fm.check_forward(str(tmp_path / 'forward.npz'))
    assert not _failures(rows), _failures(rows)

    data[f'{cfg}__block_group3_channel_mean'] = data[f'{cfg}__block_group3_channel_mean'] + 1e-3
    np.savez(tmp_path / 'forward.npz', **data)
    failed = _failures(fm.check_forward(str(tmp_path / 'forward.npz')))
    assert [row[0] for row in failed] == [f'{cfg}__block_group3_channel_mean']
