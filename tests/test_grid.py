"""Tests for simclr_mura.study.grid: the runs of each preset, and skip/resume/stop on a model root."""
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from simclr_mura.study import grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flag(run, name):
    values = [o.split('=', 1)[1] for o in run.overrides if o.startswith(f'--{name}=')]
    return values[-1] if values else None


@pytest.mark.parametrize('preset', ['gpu', 'demo'])
def test_plan_has_eight_runs_per_part_with_existing_flagfiles(preset):
    runs = grid.plan(['elbow', 'hand', 'shoulder'], preset, 'DATA', 'ROOT')
    assert len(runs) == 24
    names = [r.name for r in runs[:8]]
    assert names == ['pretrain_elbow', 'finetune_1pct_elbow', 'finetune_10pct_elbow',
                     'finetune_100pct_elbow', 'lineareval_elbow', 'baseline_1pct_elbow',
                     'baseline_10pct_elbow', 'baseline_100pct_elbow']
    for run in runs:
        assert os.path.isfile(run.flagfile), run.flagfile
        assert _flag(run, 'model_dir') == os.path.join('ROOT', run.name)
        assert _flag(run, 'data_dir') == 'DATA' and _flag(run, 'eval_split') == 'test'
        part = run.name.rsplit('_', 1)[1]
        if preset == 'demo':
            assert _flag(run, 'dataset') == f'mura/{part}'
        else:
            assert f'_{part}' in os.path.basename(run.flagfile)
        if run.name.startswith(('finetune', 'lineareval')):
            assert _flag(run, 'checkpoint') == os.path.join('ROOT', f'pretrain_{part}')
    if preset == 'gpu':
        splits = [_flag(r, 'train_split') for r in runs[5:8]]
        assert splits == ['train_1pct', 'train_10pct', 'train']
        assert os.path.basename(runs[4].flagfile) == 'lineareval_elbow.cfg'


def test_plan_rejects_unknown_parts_presets_and_missing_flagfiles():
    with pytest.raises(ValueError, match='choose body parts'):
        grid.plan(['knee'], 'gpu', 'D', 'M')
    with pytest.raises(ValueError, match='choose one of'):
        grid.plan(['elbow'], 'tpu', 'D', 'M')
    with pytest.raises(ValueError, match='no flagfile .*pretrain_wrist.cfg'):
        grid.plan(['wrist'], 'gpu', 'D', 'M')  # no per-part flagfiles for wrist


def _checkpoint(model_dir):
    step = tf.Variable(3)
    tf.train.Checkpoint(step=step).save(os.path.join(model_dir, 'ckpt'))


def test_finished_runs_are_skipped_and_unfinished_ones_resumed(tmp_path, capsys):
    runs = grid.plan(['elbow'], 'demo', str(tmp_path / 'no_data'), str(tmp_path))
    (tmp_path / 'pretrain_elbow').mkdir()
    (tmp_path / 'pretrain_elbow' / 'result.json').write_text('{}')
    _checkpoint(str(tmp_path / 'finetune_1pct_elbow'))
    assert [grid.status(r, str(tmp_path)) for r in runs[:3]] == ['done', 'resume', 'new']
    assert grid.run_grid(runs, str(tmp_path), dry_run=True) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == '[1/8] pretrain_elbow: finished, skipped'
    assert lines[1].startswith('[2/8] finetune_1pct_elbow: resuming: ')
    assert lines[2].startswith('[3/8] finetune_10pct_elbow: running: ')
    assert len(lines) == 8


def test_grid_stops_at_the_first_failing_run(tmp_path, capfd):
    # The real run.py fails fast here (the dataset is not built); later runs are not attempted.
    runs = grid.plan(['elbow'], 'demo', str(tmp_path / 'no_data'), str(tmp_path))
    (tmp_path / 'pretrain_elbow').mkdir()
    (tmp_path / 'pretrain_elbow' / 'result.json').write_text('{}')
    code = grid.run_grid(runs, str(tmp_path))
    captured = capfd.readouterr()
    assert code != 0
    assert 'grid: error: finetune_1pct_elbow failed' in captured.err
    assert 'finetune_10pct_elbow' not in captured.out
    assert not (tmp_path / 'finetune_10pct_elbow').exists()


def test_cli_reports_bad_parts_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'simclr_mura.study.grid', '--parts=elbow,knee',
                           f'--data_dir={tmp_path}', f'--model_root={tmp_path}/m'],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith('grid: error')]
    assert errors == ['grid: error: --parts=elbow,knee: choose body parts from elbow, finger, '
                      'forearm, hand, humerus, shoulder, wrist']
    assert not (tmp_path / 'm').exists()


def test_cpu_preset_has_probe_seeds_and_random_init_rows(tmp_path):
    runs = grid.plan(['elbow'], 'cpu', 'DATA', 'ROOT')
    names = [r.name for r in runs]
    seeds = len(grid.SEEDS)
    assert names[:2] == ['pretrain_elbow', 'probe_elbow']
    micle = 2 + seeds + 2 * seeds
    assert len(runs) == 2 + seeds + 3 * 2 * seeds + 3 + micle
    pretrain = os.path.join('ROOT', 'pretrain_elbow')
    probe = runs[1]
    assert probe.module == 'simclr_mura.probe' and probe.result_file == 'probe.json'
    assert _flag(probe, 'checkpoint') == pretrain and _flag(probe, 'out') == os.path.join('ROOT', 'probe_elbow')
    assert probe.command('py')[:3] == ['py', '-m', 'simclr_mura.probe']
    for percent in (1, 10, 100):
        for seed in grid.SEEDS:
            tuned = runs[names.index(f'finetune_{percent}pct_elbow_seed{seed}')]
            scratch = runs[names.index(f'randominit_{percent}pct_elbow_seed{seed}')]
            # The ablation row is the same recipe (flagfile) without the pretrained weights.
            assert tuned.flagfile == scratch.flagfile
            assert _flag(tuned, 'checkpoint') == pretrain and _flag(scratch, 'checkpoint') is None
            assert '--allow_random_init' in scratch.overrides
            assert _flag(tuned, 'seed') == _flag(scratch, 'seed') == str(seed)
    # MICLe rows: the same pretraining flagfile with study-view pairs; its rows start from it.
    micle_pretrain = runs[names.index('pretrain_micle_elbow')]
    assert micle_pretrain.flagfile == runs[0].flagfile
    assert '--positive_pairs=study_views' in micle_pretrain.overrides
    assert '--positive_pairs=study_views' not in runs[0].overrides
    micle_dir = os.path.join('ROOT', 'pretrain_micle_elbow')
    assert _flag(runs[names.index('probe_micle_elbow')], 'checkpoint') == micle_dir
    for name in [f'lineareval_micle_elbow_seed{s}' for s in grid.SEEDS] + [
            f'finetune_micle_{p}pct_elbow_seed{s}' for p in (1, 10) for s in grid.SEEDS]:
        assert _flag(runs[names.index(name)], 'checkpoint') == micle_dir
    for run in runs:
        assert run.flagfile is None or os.path.isfile(run.flagfile)
        if run.flagfile:
            assert _flag(run, 'dataset') == 'mura/elbow' and _flag(run, 'eval_split') == 'test'
    # A probe is finished when its probe.json exists.
    (tmp_path / 'probe_elbow').mkdir()
    assert grid.status(runs[1], str(tmp_path)) == 'new'
    (tmp_path / 'probe_elbow' / 'probe.json').write_text('{}')
    assert grid.status(runs[1], str(tmp_path)) == 'done'


def test_cpu_preset_flagfiles_are_valid_run_settings():
    """Every cpu flagfile, with the grid's overrides, parses into a Config that validates."""
    from absl import flags
    from simclr_mura import config as config_lib
    from simclr_mura import flags_def
    for run in grid.plan(['elbow'], 'cpu', 'DATA', 'ROOT'):
        if run.flagfile is None:
            continue
        flag_values = flags.FlagValues()
        flags_def.define_flags(flag_values)
        flag_values(['run.py', *run.command('python')[2:]])
        config = flags_def.config_from_flags(flag_values)
        config_lib.validate(config, available_splits=['train', 'validation', 'test', 'train_10pct',
                                                      'train_1pct'], num_replicas=1)
        assert config.image_size == 96 and config.model_dir == os.path.join('ROOT', run.name)
