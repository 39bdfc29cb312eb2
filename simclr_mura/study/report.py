"""Results report of finished runs: `python -m simclr_mura.study.report --model_root M --out R [--data_dir D]`.

Reads only files that runs wrote (`result.json`, `flags.json`, the predictions CSV and the
TensorBoard summaries of every run directory below `model_root`), so it works on runs made
elsewhere and copied back. Writes to `R`:
- `results.csv` / `results.md`: one row per run (body part, method, label fraction) with image- and
  study-level accuracy, precision, recall, F1, AUROC and Cohen's kappa, the number of labelled
  training images, 95% bootstrap CIs (study resampling) of kappa and AUROC, the seed report's
  accuracy/precision/recall for the same row and the MURA paper's model kappa of the part;
- `figures/`: label efficiency, ROC curves, confusion matrices, training curves and a gallery of
  confident right and wrong predictions per part (`gallery.py`: the test images from the TFDS
  dataset named in the run's flags.json, or `--data_dir`, without it the page says so; the run's
  Grad-CAM maps over them when `simclr_mura.gradcam` made some);
- `index.html`: the table and every figure on one page (with the data exploration of
  `simclr_mura.study.explore` when it was written to the same folder).
"""
if __name__ == '__main__':  # As a command: TensorFlow's start-up notices filtered (tf_env.py).
    from simclr_mura import tf_env
    tf_env.import_tensorflow()

import json
import math
import os
import sys
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import tensorflow as tf
from absl import app
from absl import flags
from tensorflow.core.util import event_pb2

from simclr_mura import io_util
from simclr_mura import metrics as metrics_lib
from simclr_mura.study import figures
from simclr_mura.study import gallery
from simclr_mura.study import html_page
from simclr_mura.study import probe_table
from simclr_mura.study import run_files

BASELINE_NAME = figures.BASELINE
PRETRAIN_NAME = 'SimCLR pretrain (linear-eval head)'
# Runs pretrained, or fine-tuned from a pretraining, with --positive_pairs=study_views.
MICLE_PREFIX = 'MICLe '
_METHOD_ORDER = (BASELINE_NAME, figures.FINETUNE, MICLE_PREFIX + figures.FINETUNE, figures.RANDOM_INIT,
                 figures.LINEAR, MICLE_PREFIX + figures.LINEAR, PRETRAIN_NAME,
                 MICLE_PREFIX + PRETRAIN_NAME)
LEVELS = ('study', 'image')
METRICS = (('acc', 'accuracy'), ('precision', 'precision'), ('recall', 'recall'), ('F1', 'f1'),
           ('AUROC', 'auroc'), ('kappa', 'kappa'))
LABEL_PERCENT = run_files.LABEL_PERCENT
# The MURA paper's DenseNet-169 kappa on its test set (final version; docs/mura.md section 4).
PAPER_KAPPA = {'elbow': 0.710, 'finger': 0.389, 'forearm': 0.737, 'hand': 0.851, 'humerus': 0.600,
               'shoulder': 0.729, 'wrist': 0.931, 'all': 0.705}
# The seed report's Table 4 (docs/mura.md 5.3): (part, method, label %) -> (acc, prec, recall).
# Its baseline was study-level at 128 px on all labels; its "Finetune" rows were linear evaluation
# (frozen backbone) per image at 224 px, so they are shown next to both SimCLR rows of that fraction.
_SEED_BASELINE = {'elbow': (0.822, 0.506, 0.333), 'hand': (0.784, 0.479, 0.225),
                  'shoulder': (0.778, 0.540, 0.475)}
_SEED_FINETUNE = {('elbow', 1): (0.475, 0.460, 0.356), ('elbow', 10): (0.606, 0.629, 0.495),
                  ('elbow', 100): (0.621, 0.635, 0.552), ('hand', 1): (0.578, 0.472, 0.227),
                  ('hand', 10): (0.617, 0.582, 0.243), ('hand', 100): (0.608, 0.560, 0.222),
                  ('shoulder', 1): (0.525, 0.514, 0.708), ('shoulder', 10): (0.589, 0.583, 0.593),
                  ('shoulder', 100): (0.628, 0.633, 0.589)}
_NOTES = ('Metrics are on the eval split of each run (test = the official MURA valid set). A study is '
         'abnormal when the mean of its images\' probabilities is > 0.5 (the MURA paper). CIs: 95% '
         'percentile bootstrap over studies ({resamples} resamples, seed 0). "seed a/p/r": the seed '
         'report\'s accuracy/precision/recall (its baseline: study level, 128 px; its "Finetune": '
         'linear evaluation per image at 224 px). "paper kappa": the MURA paper\'s DenseNet-169 '
         'on its hidden test set.')


def notes(num_resamples: int) -> str:
    """The explanation printed under the results tables."""
    return _NOTES.format(resamples=f'{num_resamples:,}')


def method_name(settings: Dict, pretraining: Optional[Dict] = None) -> str:
    """How a run is named in tables: the DenseNet baseline, SimCLR pretrain+linear eval, fine-tune,
    or linear eval; prefixed 'MICLe ' when the run, or the pretraining it started from
    (`pretraining`: that run's settings), paired views of a study."""
    if settings.get('train_mode') == 'baseline':
        return BASELINE_NAME
    source = settings if settings.get('train_mode') == 'pretrain' else (pretraining or {})
    prefix = MICLE_PREFIX if source.get('positive_pairs') == 'study_views' else ''
    if settings.get('train_mode') == 'pretrain':
        return prefix + PRETRAIN_NAME
    if settings.get('train_mode') == 'finetune':
        if settings.get('fine_tune_after_block') == 4:
            return prefix + figures.LINEAR
        # --allow_random_init without --checkpoint: the fine-tuning recipe with nothing pretrained.
        return prefix + figures.FINETUNE if settings.get('checkpoint') else figures.RANDOM_INIT
    return str(settings.get('train_mode', '?'))


def pretraining_settings(checkpoint: Optional[str], model_root: str) -> Optional[Dict]:
    """The flags.json of the run a fine-tune started from (`--checkpoint`: a run directory or a
    checkpoint prefix in it), found where it was or, for runs copied here, below `model_root`."""
    if not checkpoint:
        return None
    for run_dir in (checkpoint, os.path.dirname(checkpoint.rstrip('/'))):
        for where in (run_dir, os.path.join(model_root, os.path.basename(run_dir.rstrip('/')))):
            settings = _read_json(os.path.join(where, run_files.FLAGS)) if where else None
            if settings and settings.get('train_mode') == 'pretrain':
                return settings
    return None


def seed_numbers(part: str, method: str, percent: float):
    """The seed report's (accuracy, precision, recall) for this row, or None."""
    if method == BASELINE_NAME and percent == 100:
        return _SEED_BASELINE.get(part)
    if method in (figures.FINETUNE, figures.LINEAR):
        return _SEED_FINETUNE.get((part, percent))
    return None


def _read_json(path: str) -> Optional[Dict]:
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def read_predictions(run_dir: str, result: Dict) -> Optional[pd.DataFrame]:
    """The predictions CSV that `result` was computed from, or None if it is missing."""
    path = os.path.join(run_dir, run_files.predictions_filename(str(result.get('eval_split')),
                                                                  int(result.get('global_step', 0))))
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return pd.read_csv(f)


def _num_train_images(result: Dict, settings: Dict, data_dir: Optional[str]) -> float:
    if result.get('num_train_examples') is not None:
        return float(result['num_train_examples'])
    try:  # Runs made before result.json held the count: ask the dataset's metadata.
        import tensorflow_datasets as tfds
        import tfds_mura  # noqa: F401  (registers the builder)
        builder = tfds.builder(settings['dataset'], data_dir=data_dir or settings.get('data_dir'))
        return float(builder.info.splits[settings['train_split']].num_examples)
    except Exception:  # No dataset here: the count stays unknown rather than failing the report.
        return math.nan


class Run:
    """One finished run directory: its settings, result and predictions."""

    def __init__(self, run_dir: str, model_root: str):
        self.dir = run_dir
        self.name = os.path.relpath(run_dir, model_root)
        self.result = _read_json(os.path.join(run_dir, run_files.RESULT))
        self.settings = _read_json(os.path.join(run_dir, run_files.FLAGS)) or {}
        self.predictions = read_predictions(run_dir, self.result)
        dataset = str(self.settings.get('dataset', ''))
        self.part = dataset.split('/', 1)[1] if '/' in dataset else (dataset or '?')
        self.method = method_name(self.settings,
                                  pretraining_settings(self.settings.get('checkpoint'), model_root))
        split = str(self.settings.get('train_split', ''))
        self.percent = LABEL_PERCENT.get(split, math.nan)

    @property
    def label(self) -> str:
        percent = '?' if math.isnan(self.percent) else f'{self.percent:g}%'
        return f'{self.method}, {percent}'


def find_runs(model_root: str) -> List[Run]:
    return [Run(directory, model_root) for directory, _, files in sorted(tf.io.gfile.walk(model_root))
            if run_files.RESULT in files]


def table_row(run: Run, data_dir: Optional[str] = None, num_resamples: int = 1000) -> Dict:
    """The results row of one run (metrics from result.json, CIs from its predictions)."""
    row = {'part': run.part, 'method': run.method, 'label %': run.percent,
           'train split': run.settings.get('train_split', ''),
           'n train images': _num_train_images(run.result, run.settings, data_dir),
           'eval split': run.result.get('eval_split', ''), 'step': run.result.get('global_step'),
           'run': run.name}
    for level in LEVELS:
        for title, key in METRICS:
            value = run.result.get(f'eval/{level}/overall/{key}')
            row[f'{level} {title}'] = math.nan if value is None else float(value)
        intervals = ({} if run.predictions is None else
                     metrics_lib.bootstrap_ci(run.predictions, level, num_resamples=num_resamples))
        for metric in ('kappa', 'AUROC'):
            low, high = intervals.get(metric.lower(), (math.nan, math.nan))
            row[f'{level} {metric} CI low'], row[f'{level} {metric} CI high'] = low, high
    seed = seed_numbers(run.part, run.method, run.percent) or (math.nan,) * 3
    row['seed accuracy'], row['seed precision'], row['seed recall'] = seed
    row['paper kappa'] = PAPER_KAPPA.get(run.part, math.nan)
    return row


def _sort_key(row: Dict):
    method = row['method']
    percent = row['label %']
    return (row['part'], _METHOD_ORDER.index(method) if method in _METHOD_ORDER else 9,
            9999 if math.isnan(percent) else percent, row['run'])


def collect(model_root: str, data_dir: Optional[str] = None, runs: Optional[List[Run]] = None,
            num_resamples: int = 1000) -> pd.DataFrame:
    """One row per run directory below `model_root` holding a result.json, ordered by part, method
    (baseline first) and label fraction."""
    runs = find_runs(model_root) if runs is None else runs
    rows = sorted((table_row(r, data_dir, num_resamples) for r in runs), key=_sort_key)
    return pd.DataFrame(rows)


def _cell(value, digits: int = 3) -> str:
    if isinstance(value, (float, np.floating)):
        return '-' if math.isnan(value) else f'{value:.{digits}f}'
    return str(value)


def _with_ci(row, name: str) -> str:
    low, high = row[f'{name} CI low'], row[f'{name} CI high']
    if math.isnan(row[name]):
        return '-'
    # round() + 0.0 turns a rounded -0.0 into 0.0.
    ci = '' if math.isnan(low) else f' [{round(low, 2) + 0.0:.2f}, {round(high, 2) + 0.0:.2f}]'
    return f'{round(row[name], 3) + 0.0:.3f}{ci}'


def markdown_tables(table: pd.DataFrame) -> Dict[str, List[List[str]]]:
    """{'study': rows, 'image': rows}: header row first, then one row of cells per run."""
    out = {}
    for level in LEVELS:
        header = ['part', 'method', 'labels', 'n train', 'acc', 'precision', 'recall', 'F1',
                  'AUROC [95% CI]', 'kappa [95% CI]', 'seed a/p/r', 'paper kappa']
        rows = [header]
        for _, row in table.iterrows():
            seed = ('-' if math.isnan(row['seed accuracy']) else
                    '/'.join(f'{row[f"seed {m}"]:.2f}' for m in ('accuracy', 'precision', 'recall')))
            percent = '-' if math.isnan(row['label %']) else f'{row["label %"]:g}%'
            rows.append([row['part'], row['method'], percent, _cell(row['n train images'], 0),
                         *(_cell(row[f'{level} {t}']) for t in ('acc', 'precision', 'recall', 'F1')),
                         _with_ci(row, f'{level} AUROC'), _with_ci(row, f'{level} kappa'), seed,
                         _cell(row['paper kappa'])])
        out[level] = rows
    return out


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of the same part, method and label fraction (runs with different --seed) pooled:
    the number of runs and the mean and sd of study AUROC and kappa."""
    columns = ['part', 'method', 'label %', 'runs', 'study AUROC mean', 'study AUROC sd',
               'study kappa mean', 'study kappa sd']
    if table.empty:
        return pd.DataFrame(columns=columns)
    grouped = table.groupby(['part', 'method', 'label %'], sort=False, dropna=False)
    summary = grouped.agg(**{'runs': ('run', 'size'),
                             'study AUROC mean': ('study AUROC', 'mean'),
                             'study AUROC sd': ('study AUROC', 'std'),
                             'study kappa mean': ('study kappa', 'mean'),
                             'study kappa sd': ('study kappa', 'std')}).reset_index()
    return summary[columns]


def seed_rows(table: pd.DataFrame) -> List[List[str]]:
    """The seed summary as table cells (header first); '-' for the sd of a single run."""
    rows = [['part', 'method', 'labels', 'runs', 'study AUROC mean ± sd', 'study kappa mean ± sd']]
    for _, row in seed_summary(table).iterrows():
        percent = '-' if math.isnan(row['label %']) else f'{row["label %"]:g}%'
        cells = []
        for metric in ('AUROC', 'kappa'):
            mean, sd = row[f'study {metric} mean'], row[f'study {metric} sd']
            cells.append(_cell(mean) + ('' if math.isnan(sd) else f' ± {sd:.3f}'))
        rows.append([row['part'], row['method'], percent, str(int(row['runs'])), *cells])
    return rows


def _markdown_table(rows: List[List[str]]) -> List[str]:
    return (['| ' + ' | '.join(rows[0]) + ' |', '|' + '|'.join('---' for _ in rows[0]) + '|']
            + ['| ' + ' | '.join(r) + ' |' for r in rows[1:]])


def to_markdown(table: pd.DataFrame, num_resamples: int = 1000,
                probes: Optional[List[Dict]] = None) -> str:
    """results.md: a study-level and an image-level table, the seed summary (when some row
    has several runs), the probe table (when there are probes), then the notes."""
    if table.empty and not probes:
        return '(no finished runs)'
    parts = []
    if not table.empty and (seed_summary(table)['runs'] > 1).any():
        parts += ['### Mean over seeds\n', *_markdown_table(seed_rows(table)), '']
    if probes:
        parts += ['### Frozen-feature probe (logistic regression on the encoder\'s features)\n',
                  *_markdown_table(probe_table.probe_rows(probes)), '']
    for level, rows in (markdown_tables(table).items() if not table.empty else ()):
        parts.append(f'### {level.capitalize()} level\n')
        parts.append('| ' + ' | '.join(rows[0]) + ' |')
        parts.append('|' + '|'.join('---' for _ in rows[0]) + '|')
        parts += ['| ' + ' | '.join(r) + ' |' for r in rows[1:]]
        parts.append('')
    parts.append(notes(num_resamples))
    return '\n'.join(parts)


def _scalar_series(run_dir: str) -> Dict[str, Dict[int, float]]:
    """tag -> {step: value} from the run's TensorBoard event files (last value of a step wins)."""
    series: Dict[str, Dict[int, float]] = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(run_dir, run_files.SUMMARIES_GLOB))):
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                for value in event.summary.value:
                    if value.HasField('tensor'):
                        number = tf.make_ndarray(value.tensor)
                        if number.size != 1:
                            continue
                        number = float(number.reshape(()))
                    elif value.HasField('simple_value'):
                        number = float(value.simple_value)
                    else:
                        continue
                    series.setdefault(value.tag, {})[int(event.step)] = number
        except tf.errors.DataLossError:  # A file cut short by a killed run: keep what was read.
            continue
    return series


def training_series(run: Run) -> Dict[str, tuple]:
    """'loss', 'accuracy', 'learning rate' -> (steps, values) of one run; a pretraining run's
    loss and accuracy are the contrastive ones, with their chance levels as 'loss chance' and
    'accuracy chance' when the run logged them."""
    tags = {'loss': ('train/total_loss',),
            'accuracy': ('train/supervised_acc', 'train/contrast_acc'),
            'learning rate': ('learning_rate',)}
    found = _scalar_series(run.dir)
    if run.method == PRETRAIN_NAME:
        tags.update({'loss': ('train/contrast_loss', 'train/total_loss'),
                     'accuracy': ('train/contrast_acc',),
                     'loss chance': ('train/contrast_loss_chance',),
                     'accuracy chance': ('train/contrast_acc_chance',)})
    out = {}
    for kind, names in tags.items():
        for name in names:
            if name in found:
                steps = sorted(found[name])
                out[kind] = (np.array(steps), np.array([found[name][s] for s in steps]))
                break
    return out


def write_figures(table: pd.DataFrame, runs: List[Run], out: str,
                  data_dir: Optional[str]) -> List[html_page.Figure]:
    """Every figure of the report, per part; returns them in page order."""
    figure_dir = os.path.join(out, 'figures')
    tf.io.gfile.makedirs(figure_dir)
    written = []
    for part in sorted({r.part for r in runs}):
        part_runs = sorted((r for r in runs if r.part == part), key=lambda r: _sort_key(
            {'part': r.part, 'method': r.method, 'label %': r.percent, 'run': r.name}))
        rows = table[(table['part'] == part) & table['method'].isin(list(figures.METHOD_STYLE))]
        if len(rows):
            written.append(html_page.Figure(
                f'Label efficiency, {part}', figures.label_efficiency(
                    rows, part, os.path.join(figure_dir, f'label_efficiency_{part}.png'))))
        with_predictions = [r for r in part_runs if r.predictions is not None]
        studies = [(r, metrics_lib.study_predictions(r.predictions)) for r in with_predictions]
        if studies:
            written.append(html_page.Figure(f'ROC curves, {part}', figures.roc_curves(
                [(r.label, r.method, s) for r, s in studies], part,
                os.path.join(figure_dir, f'roc_{part}.png'))))
            matrices = [(r.label, np.array(study_confusion(s))) for r, s in studies]
            written.append(html_page.Figure(f'Confusion matrices, {part}', figures.confusion_matrices(
                matrices, part, os.path.join(figure_dir, f'confusion_{part}.png'))))
        series = {r.label: training_series(r) for r in part_runs}
        series = {k: v for k, v in series.items() if v}
        if series:
            written.append(html_page.Figure(f'Training curves, {part}', figures.training_curves(
                series, part, os.path.join(figure_dir, f'training_{part}.png'))))
        written.append(gallery.write_gallery(part_runs, part, figure_dir, data_dir))
    return written


def study_confusion(studies: pd.DataFrame) -> np.ndarray:
    """2x2 counts [true][predicted] of study predictions (normal = 0, abnormal = 1)."""
    predicted = (studies['probability'].to_numpy(dtype=float) > metrics_lib.THRESHOLD).astype(int)
    counts = np.zeros((2, 2), dtype=int)
    np.add.at(counts, (studies['label'].to_numpy(dtype=int), predicted), 1)
    return counts


def write_report(model_root: str, out: str, data_dir: Optional[str] = None,
                 num_resamples: int = 1000) -> pd.DataFrame:
    """Writes results.csv/md, the figures and index.html to `out`; returns the table."""
    runs = find_runs(model_root)
    probes = probe_table.find_probes(model_root)
    table = collect(model_root, data_dir, runs, num_resamples)
    tf.io.gfile.makedirs(out)
    io_util.write_text_atomic(os.path.join(out, 'results.csv'), table.to_csv(index=False))
    markdown = to_markdown(table, num_resamples, probes)
    io_util.write_text_atomic(os.path.join(out, 'results.md'), '# Results\n\n' + markdown + '\n')
    written = write_figures(table, runs, out, data_dir) if runs else []
    tables = {}
    if runs and (seed_summary(table)['runs'] > 1).any():
        tables['Mean over seeds'] = seed_rows(table)
    if probes:
        tables['Frozen-feature probe'] = probe_table.probe_rows(probes)
    tables.update(markdown_tables(table) if runs else {})
    section = html_page.results_section(tables, notes(num_resamples), written, out)
    html_page.write_section(out, 'results', section)
    html_page.write_index(out)
    return table


FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not tf.io.gfile.isdir(FLAGS.model_root):
        print(f'report: error: --model_root {FLAGS.model_root} is not a directory; pass the folder '
              'holding the run directories', file=sys.stderr)
        return 1
    table = write_report(FLAGS.model_root, FLAGS.out, FLAGS.data_dir, FLAGS.bootstrap_resamples)
    print(to_markdown(table, FLAGS.bootstrap_resamples, probe_table.find_probes(FLAGS.model_root)))
    print(f'\nwrote {os.path.join(FLAGS.out, "results.md")}, results.csv, figures/ and '
          f'{os.path.join(FLAGS.out, "index.html")}')
    return 0


if __name__ == '__main__':
    flags.DEFINE_string('model_root', None, 'Directory whose run directories hold result.json.')
    flags.DEFINE_string('out', None, 'Where to write the tables, figures and index.html.')
    flags.DEFINE_string('data_dir', None, 'TFDS data_dir for the gallery images (default: each '
                        'run\'s own data_dir from its flags.json).')
    flags.DEFINE_integer('bootstrap_resamples', 1000, 'Bootstrap resamples of the CIs.')
    flags.mark_flags_as_required(['model_root', 'out'])
    app.run(main)
