"""The experiment grid: `python -m simclr_mura.study.grid --parts elbow,hand --preset demo|gpu ...`.

For each body part: SimCLR pretraining; fine-tuning at 1%, 10% and 100% labels and linear
evaluation, all from that pretraining run; the DenseNet-169 baseline at 1%, 10% and 100%. Every
run is `run.py --flagfile=flags/<file>.cfg` plus overrides that put it in `<model_root>/<name>`,
read `<data_dir>` and evaluate on the test split.

Presets: `gpu` uses the per-part flagfiles (the seed's and the paper's settings; the baseline's
flagfile with the label fraction's training split); `demo` uses the small `demo_*` flagfiles,
small enough for a CPU. `cpu` is the learning study of docs/learning.md on a 2-core CPU: the
`cpu_*` flagfiles, and after pretraining the frozen-feature probe (`simclr_mura.probe`, against
random encoders), linear evaluation, fine-tuning and the same fine-tuning from a random
initialisation (`--allow_random_init`, which isolates what pretraining contributes) at 1/10/100%,
each with the seeds of `SEEDS`, then the baseline at 1/10/100% once; then MICLe (the same
pretraining with `--positive_pairs=study_views`), its probe, linear evaluation and fine-tuning at
1% and 10%.

A run whose model_dir holds its result file (`result.json`; the probe's `probe.json`) is finished
and skipped (run.py writes it only after
training and evaluation are done); an unfinished one is started again with the same model_dir,
where run.py resumes from its newest checkpoint. So an interrupted grid continues where it
stopped. The grid stops at the first failing run (later runs may depend on it).
"""
if __name__ == '__main__':  # As a command: TensorFlow's start-up notices filtered (tf_env.py).
    from simclr_mura import tf_env
    tf_env.import_tensorflow()

import dataclasses
import os
import subprocess
import sys
import time
from typing import List, Optional, Sequence, Tuple

import tensorflow as tf
from absl import app
from absl import flags

from simclr_mura.study import run_files
from tfds_mura.mura.mura_source import PARTS

PRESETS = ('demo', 'cpu', 'gpu')
SEEDS = (0, 1, 2)  # The cpu preset's seeds for probe, linear evaluation and fine-tuning rows.
FRACTIONS = ((1, 'train_1pct'), (10, 'train_10pct'), (100, 'train'))
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS_DIR = os.path.join(REPO_ROOT, 'flags')


@dataclasses.dataclass(frozen=True)
class GridRun:
    """One run of the grid: its directory name, flagfile and overrides (a `run.py` run), or a
    module run with `python -m` (the probe) and the file that marks it finished."""
    name: str
    flagfile: Optional[str]
    overrides: Tuple[str, ...]
    module: Optional[str] = None
    result_file: str = run_files.RESULT

    def command(self, python: str = sys.executable) -> List[str]:
        if self.module:
            return [python, '-m', self.module, *self.overrides]
        return [python, os.path.join(REPO_ROOT, 'run.py'), f'--flagfile={self.flagfile}',
                *self.overrides]


def _flagfile(name: str) -> str:
    return os.path.join(FLAGS_DIR, f'{name}.cfg')


def _part_runs(part: str, preset: str, data_dir: str, model_root: str) -> List[GridRun]:
    """The eight runs of one part, pretraining first (the others load its checkpoint)."""
    def run(name, flagfile, *extra):
        overrides = [f'--data_dir={data_dir}', f'--model_dir={os.path.join(model_root, name)}',
                     '--eval_split=test', *extra]
        if preset == 'demo':  # The demo flagfiles are written for all parts; the grid is per part.
            overrides.append(f'--dataset=mura/{part}')
        return GridRun(name, _flagfile(flagfile), tuple(overrides))

    pretrain = f'pretrain_{part}'
    from_pretrain = f'--checkpoint={os.path.join(model_root, pretrain)}'
    demo = preset == 'demo'
    runs = [run(pretrain, 'demo_pretrain' if demo else pretrain)]
    for percent, _ in FRACTIONS:
        name = f'finetune_{percent}pct_{part}'
        runs.append(run(name, f'demo_finetune_{percent}pct' if demo else name, from_pretrain))
    runs.append(run(f'lineareval_{part}', 'demo_lineareval' if demo else f'lineareval_{part}',
                    from_pretrain))
    for percent, split in FRACTIONS:
        name = f'baseline_{percent}pct_{part}'
        if demo:
            runs.append(run(name, f'demo_baseline_{percent}pct'))
        else:  # One flagfile per part; the label fraction is its training split.
            runs.append(run(name, f'baseline_{part}', f'--train_split={split}'))
    return runs


def _cpu_part_runs(part: str, data_dir: str, model_root: str) -> List[GridRun]:
    """The cpu preset's runs of one part (module docstring), pretraining first."""
    def run(name, flagfile, *extra):
        overrides = (f'--data_dir={data_dir}', f'--model_dir={os.path.join(model_root, name)}',
                     '--eval_split=test', f'--dataset=mura/{part}', *extra)
        return GridRun(name, _flagfile(flagfile), overrides)

    def probe(name, pretrain_dir):
        return GridRun(name, None, (
            f'--checkpoint={pretrain_dir}', f'--data_dir={data_dir}', f'--dataset=mura/{part}',
            '--eval_split=test', f'--seeds={",".join(map(str, SEEDS))}',
            f'--out={os.path.join(model_root, name)}'),
            module='simclr_mura.probe', result_file=run_files.PROBE)

    pretrain_dir = os.path.join(model_root, f'pretrain_{part}')
    runs = [run(f'pretrain_{part}', 'cpu_pretrain'), probe(f'probe_{part}', pretrain_dir)]
    for seed in SEEDS:
        runs.append(run(f'lineareval_{part}_seed{seed}', 'cpu_lineareval', f'--seed={seed}',
                        f'--checkpoint={pretrain_dir}'))
    for percent, _ in FRACTIONS:
        for seed in SEEDS:
            runs.append(run(f'finetune_{percent}pct_{part}_seed{seed}', f'cpu_finetune_{percent}pct',
                            f'--seed={seed}', f'--checkpoint={pretrain_dir}'))
            runs.append(run(f'randominit_{percent}pct_{part}_seed{seed}', f'cpu_finetune_{percent}pct',
                            f'--seed={seed}', '--allow_random_init'))
    for percent, _ in FRACTIONS:
        runs.append(run(f'baseline_{percent}pct_{part}', f'cpu_baseline_{percent}pct'))
    # MICLe: the same pretraining with two views of a study as the positive pair, then the probe,
    # linear evaluation and fine-tuning at 1% and 10%.
    micle_dir = os.path.join(model_root, f'pretrain_micle_{part}')
    runs += [run(f'pretrain_micle_{part}', 'cpu_pretrain', '--positive_pairs=study_views'),
             probe(f'probe_micle_{part}', micle_dir)]
    for seed in SEEDS:
        runs.append(run(f'lineareval_micle_{part}_seed{seed}', 'cpu_lineareval', f'--seed={seed}',
                        f'--checkpoint={micle_dir}'))
    for percent in (1, 10):
        for seed in SEEDS:
            runs.append(run(f'finetune_micle_{percent}pct_{part}_seed{seed}',
                            f'cpu_finetune_{percent}pct', f'--seed={seed}', f'--checkpoint={micle_dir}'))
    return runs


def plan(parts: Sequence[str], preset: str, data_dir: str, model_root: str) -> List[GridRun]:
    """Every run of the grid in execution order.

    Raises:
      ValueError: an unknown part or preset, or a flagfile that does not exist.
    """
    if preset not in PRESETS:
        raise ValueError(f'--preset={preset}: choose one of {", ".join(PRESETS)}')
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f'--parts={",".join(parts)}: choose body parts from {", ".join(PARTS)}')
    runs = [r for part in parts for r in (
        _cpu_part_runs(part, data_dir, model_root) if preset == 'cpu'
        else _part_runs(part, preset, data_dir, model_root))]
    missing = [r.flagfile for r in runs if r.flagfile and not os.path.exists(r.flagfile)]
    if missing:
        raise ValueError(f'no flagfile {missing[0]} ({len(set(missing))} flagfile(s) of preset {preset} '
                         'missing for these parts); write them or pick other --parts')
    return runs


def status(run: GridRun, model_root: str) -> str:
    """'done' (its result file written), 'resume' (checkpoints but no result) or 'new'."""
    model_dir = os.path.join(model_root, run.name)
    if tf.io.gfile.exists(os.path.join(model_dir, run.result_file)):
        return 'done'
    if tf.io.gfile.isdir(model_dir) and tf.train.latest_checkpoint(model_dir):
        return 'resume'
    return 'new'


def run_grid(runs: Sequence[GridRun], model_root: str, dry_run: bool = False,
             python: str = sys.executable) -> int:
    """Runs every unfinished run in order; returns 0, or the exit code of the first failing run."""
    total = len(runs)
    for index, run in enumerate(runs, 1):
        state = status(run, model_root)
        command = run.command(python)
        if state == 'done':
            print(f'[{index}/{total}] {run.name}: finished, skipped', flush=True)
            continue
        verb = 'resuming' if state == 'resume' else 'running'
        print(f'[{index}/{total}] {run.name}: {verb}: {" ".join(command)}', flush=True)
        if dry_run:
            continue
        start = time.time()
        code = subprocess.call(command, cwd=REPO_ROOT)
        if code != 0:
            print(f'grid: error: {run.name} failed (exit {code}); fix it and run the grid again, '
                  'finished runs are skipped', file=sys.stderr)
            return code
        print(f'[{index}/{total}] {run.name}: done in {time.time() - start:.0f} s', flush=True)
    return 0


FLAGS = flags.FLAGS


def main(argv) -> Optional[int]:
    del argv
    parts = [p.strip() for p in FLAGS.parts.split(',') if p.strip()]
    try:
        runs = plan(parts, FLAGS.preset, FLAGS.data_dir, FLAGS.model_root)
    except ValueError as e:
        print(f'grid: error: {e}', file=sys.stderr)
        return 2
    return run_grid(runs, FLAGS.model_root, dry_run=FLAGS.dry_run)


if __name__ == '__main__':
    flags.DEFINE_string('parts', 'elbow,hand,shoulder', 'Comma-separated body parts.')
    flags.DEFINE_enum('preset', 'gpu', PRESETS, 'demo: small CPU runs; cpu: the learning study '
                      '(probe, random-init rows, 3 seeds) on a CPU; gpu: the per-part flagfiles.')
    flags.DEFINE_string('data_dir', None, 'TFDS data_dir holding the built mura dataset.')
    flags.DEFINE_string('model_root', None, 'Each run writes <model_root>/<run name>.')
    flags.DEFINE_bool('dry_run', False, 'Only list the runs and their state.')
    flags.mark_flags_as_required(['data_dir', 'model_root'])
    app.run(main)
