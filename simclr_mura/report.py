"""Results table of finished runs: `python -m simclr_mura.report --model_root M [--out R]`.

Reads only files that runs wrote (`result.json` and `flags.json` of every run directory below
`model_root`), so it works on runs made elsewhere and copied back. Prints one markdown row per run
and, with `--out`, writes `results.csv` and `results.md` there. Rows are grouped by dataset and
training split (1%, 10%, all labels), the DenseNet-169 baseline first, so each label fraction shows
the baseline and the SimCLR rows side by side with the same metrics.
"""
import json
import math
import os
import sys
from typing import Dict, List, Optional

import pandas as pd
import tensorflow as tf
from absl import app
from absl import flags

from simclr_mura import io_util

# (column title, result.json key)
METRIC_COLUMNS = (
    ('image acc', 'eval/image/overall/accuracy'),
    ('image AUROC', 'eval/image/overall/auroc'),
    ('image kappa', 'eval/image/overall/kappa'),
    ('study acc', 'eval/study/overall/accuracy'),
    ('study AUROC', 'eval/study/overall/auroc'),
    ('study kappa', 'eval/study/overall/kappa'),
)


def _read_json(path: str) -> Optional[Dict]:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


BASELINE_NAME = 'DenseNet-169 baseline'
# Row order within a dataset and training split.
_METHOD_ORDER = (BASELINE_NAME, 'SimCLR fine-tune', 'SimCLR linear eval',
                 'SimCLR pretrain (linear-eval head)')


def method_name(settings: Dict) -> str:
    """How a run is named in tables: the DenseNet baseline, SimCLR pretrain+linear eval, fine-tune,
    or linear eval."""
    if settings.get('train_mode') == 'baseline':
        return BASELINE_NAME
    if settings.get('train_mode') == 'pretrain':
        return 'SimCLR pretrain (linear-eval head)'
    if settings.get('train_mode') == 'finetune':
        return 'SimCLR linear eval' if settings.get('fine_tune_after_block') == 4 else 'SimCLR fine-tune'
    return str(settings.get('train_mode', '?'))


def _split_rank(split: str) -> int:
    # Label fractions first (1% before 10%), then everything else.
    return {'train_1pct': 0, 'train_10pct': 1, 'train': 2}.get(split, 3)


def _method_rank(method: str) -> int:
    return _METHOD_ORDER.index(method) if method in _METHOD_ORDER else len(_METHOD_ORDER)


def collect(model_root: str) -> pd.DataFrame:
    """One row per run directory below `model_root` that holds a result.json, ordered by dataset,
    training split (1%, 10%, all), method (baseline first) and run."""
    rows: List[Dict] = []
    for directory, _, files in sorted(tf.io.gfile.walk(model_root)):
        if 'result.json' not in files:
            continue
        result = _read_json(os.path.join(directory, 'result.json'))
        settings = _read_json(os.path.join(directory, 'flags.json')) or {}
        row = {'run': os.path.relpath(directory, model_root),
               'method': method_name(settings),
               'dataset': settings.get('dataset', ''),
               'train split': settings.get('train_split', ''),
               'eval split': result.get('eval_split', ''),
               'step': result.get('global_step')}
        for title, key in METRIC_COLUMNS:
            value = result.get(key)
            row[title] = math.nan if value is None else float(value)
        rows.append(row)
    rows.sort(key=lambda r: (r['dataset'], _split_rank(r['train split']), r['train split'],
                             _method_rank(r['method']), r['run']))
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    """A plain markdown table (no extra dependency), metrics with 3 decimals, '-' where undefined."""
    if table.empty:
        return '(no finished runs)'

    def cell(value):
        if isinstance(value, float):
            return '-' if math.isnan(value) else f'{value:.3f}'
        return str(value)

    lines = ['| ' + ' | '.join(table.columns) + ' |',
             '|' + '|'.join('---' for _ in table.columns) + '|']
    lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in table.itertuples(index=False)]
    return '\n'.join(lines)


FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not tf.io.gfile.isdir(FLAGS.model_root):
        print(f'error: --model_root {FLAGS.model_root} is not a directory', file=sys.stderr)
        return 1
    table = collect(FLAGS.model_root)
    markdown = to_markdown(table)
    print(markdown)
    if FLAGS.out:
        tf.io.gfile.makedirs(FLAGS.out)
        io_util.write_text_atomic(os.path.join(FLAGS.out, 'results.csv'), table.to_csv(index=False))
        io_util.write_text_atomic(os.path.join(FLAGS.out, 'results.md'), markdown + '\n')
        print(f'\nwrote {os.path.join(FLAGS.out, "results.md")} and results.csv')
    return 0


if __name__ == '__main__':
    flags.DEFINE_string('model_root', None, 'Directory whose run directories hold result.json.')
    flags.DEFINE_string('out', None, 'Where to write results.csv and results.md (optional).')
    flags.mark_flag_as_required('model_root')
    app.run(main)
