"""Figures of the results report (matplotlib, Agg backend, PNG): one function per kind of figure.

Every function takes plain data (the results table, prediction tables, summary series, images)
and a path, draws one titled and labelled figure and writes it atomically; none reads run files.
"""
import io
import math
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from simclr_mura import io_util  # noqa: E402
from simclr_mura import metrics as metrics_lib  # noqa: E402

BASELINE = 'DenseNet-169 baseline'
FINETUNE = 'SimCLR fine-tune'
LINEAR = 'SimCLR linear eval'
RANDOM_INIT = 'Random-init fine-tune'
METHOD_STYLE = {BASELINE: ('tab:orange', '--', 's'), FINETUNE: ('tab:blue', '-', 'o'),
                LINEAR: ('tab:green', ':', '^'), RANDOM_INIT: ('tab:red', '-.', 'v')}
DEFAULT_STYLE = ('tab:gray', '-.', 'x')


def save(fig, path: str) -> str:
    """Writes `fig` as PNG to `path` atomically and closes it; returns `path`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=100, bbox_inches='tight')
    plt.close(fig)
    io_util.write_bytes_atomic(path, buffer.getvalue())
    return path


def label_efficiency(rows: pd.DataFrame, part: str, path: str) -> str:
    """Study-level kappa and AUROC (with bootstrap CIs) against the label fraction, per method.

    `rows`: the results table of one part (columns method, label %, study kappa/AUROC and their
    CI bounds).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ('kappa', 'AUROC')):
        for method, group in rows.groupby('method', sort=False):
            group = group.sort_values('label %')
            color, line, marker = METHOD_STYLE.get(method, DEFAULT_STYLE)
            x = group['label %'].to_numpy(dtype=float)
            y = group[f'study {metric}'].to_numpy(dtype=float)
            low = y - group[f'study {metric} CI low'].to_numpy(dtype=float)
            high = group[f'study {metric} CI high'].to_numpy(dtype=float) - y
            ax.errorbar(x, y, yerr=np.nan_to_num(np.vstack([low, high])), color=color, linestyle=line,
                        marker=marker, capsize=4, label=method)
        ax.set_xscale('log')
        ax.set_xticks([1, 10, 100], labels=['1%', '10%', '100%'])
        ax.set_xlim(0.7, 140)
        ax.set_xlabel('labelled training images (fraction of the train split)')
        ax.set_ylabel(f'study-level {metric}')
        ax.axhline(0.5 if metric == 'AUROC' else 0.0, color='black', linewidth=0.7, alpha=0.5)
        ax.grid(alpha=0.3)
        ax.set_title(f'{metric} (95% bootstrap CI)')
    axes[0].legend(loc='best', fontsize=8)
    fig.suptitle(f'Label efficiency, {part}: SimCLR vs DenseNet-169 baseline')
    return save(fig, path)


def roc_curves(curves: Sequence[Tuple[str, str, pd.DataFrame]], part: str, path: str) -> str:
    """Study-level ROC curves; `curves` holds (label, method, study predictions) per run."""
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for label, method, studies in curves:
        y = studies['label'].to_numpy(dtype=int)
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = skm.roc_curve(y, studies['probability'].to_numpy(dtype=float))
            auroc = skm.roc_auc_score(y, studies['probability'].to_numpy(dtype=float))
            # Colour per run (label fractions apart), line style per method.
            _, line, _ = METHOD_STYLE.get(method, DEFAULT_STYLE)
            ax.plot(fpr, tpr, linestyle=line, label=f'{label} (AUROC {auroc:.2f})', alpha=0.85)
    ax.plot([0, 1], [0, 1], color='black', linewidth=0.7, alpha=0.5, label='chance')
    ax.set_xlabel('false positive rate (1 - specificity)')
    ax.set_ylabel('true positive rate (sensitivity)')
    ax.set_title(f'Study-level ROC curves, {part}')
    ax.legend(loc='lower right', fontsize=7)
    ax.grid(alpha=0.3)
    return save(fig, path)


def confusion_matrices(matrices: Sequence[Tuple[str, np.ndarray]], part: str, path: str) -> str:
    """Study-level 2x2 confusion matrices, one panel per run; `matrices`: (label, counts)."""
    columns = min(4, max(1, len(matrices)))
    rows = math.ceil(len(matrices) / columns) or 1
    fig, axes = plt.subplots(rows, columns, figsize=(3.3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(matrices):]:
        ax.axis('off')
    for ax, (label, counts) in zip(axes.flat, matrices):
        ax.imshow(counts, cmap='Blues', vmin=0, vmax=max(1, counts.max()))
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, str(int(value)), ha='center', va='center',
                    color='white' if value > counts.max() / 2 else 'black', fontsize=12)
        ax.set_xticks([0, 1], labels=['normal', 'abnormal'])
        ax.set_yticks([0, 1], labels=['normal', 'abnormal'])
        ax.set_xlabel('predicted')
        ax.set_ylabel('true')
        ax.set_title(label, fontsize=9)
    fig.suptitle(f'Study-level confusion matrices, {part} (threshold 0.5 on the mean probability)')
    fig.tight_layout()
    return save(fig, path)


def training_curves(series: Dict[str, Dict[str, Tuple[np.ndarray, np.ndarray]]], part: str,
                    path: str) -> str:
    """Loss, accuracy and learning rate against the step; `series`: run -> kind -> (steps, values)
    with kind in 'loss', 'accuracy', 'learning rate', and optionally 'loss chance' / 'accuracy
    chance' (a pretraining run's contrastive chance levels, drawn dashed in the run's colour)."""
    kinds = ('loss', 'accuracy', 'learning rate')
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, kind in zip(axes, kinds):
        for run, values in series.items():
            if kind in values:
                steps, found = values[kind]
                line, = ax.plot(steps, found, marker='.', label=run)
                if f'{kind} chance' in values:
                    chance_steps, chance = values[f'{kind} chance']
                    ax.plot(chance_steps, chance, linestyle='--', color=line.get_color(),
                            label=f'{run}: chance level')
        ax.set_xlabel('training step')
        ax.set_ylabel(kind)
        lines = [line.get_ydata() for line in ax.get_lines()]
        positive = np.concatenate(lines) if lines else np.array([])
        positive = positive[positive > 0]
        if kind == 'loss' and len(positive) and positive.max() > 20 * positive.min():
            ax.set_yscale('log')  # Pretraining's contrastive loss dwarfs the classifiers' otherwise.
        ax.set_title(kind)
        ax.grid(alpha=0.3)
    axes[0].set_title('loss (contrastive for pretraining; dashed: chance)')
    axes[1].set_title('training accuracy (contrastive for pretraining; dashed: chance)')
    handles, labels = axes[0].get_legend_handles_labels()
    fig.suptitle(f'Training curves, {part} (from the runs\' TensorBoard summaries)')
    fig.tight_layout()
    # Below the panels, where it hides no curve.
    fig.legend(handles, labels, loc='upper center', bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=8)
    return save(fig, path)


def gallery(examples: Sequence[Tuple[str, np.ndarray, int, Optional[float]]], title: str, path: str,
            columns: int = 4, overlays: Optional[Sequence[Optional[np.ndarray]]] = None) -> str:
    """Images with their label and predicted probability; `examples`: (heading, HxW[x1] uint8
    image, label, probability of abnormal or None for no prediction). Rows fill in the order given;
    a correct prediction is titled in green, a wrong one in red. `overlays[k]`, if given and not
    None, is a map in [0, 1] of any size drawn over image k (stretched to it, bilinear)."""
    rows = max(1, math.ceil(len(examples) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    overlays = list(overlays or []) + [None] * len(examples)
    for ax, (heading, image, label, probability), overlay in zip(axes.flat, examples, overlays):
        image = np.squeeze(image)
        ax.imshow(image, cmap='gray', vmin=0, vmax=255)
        if overlay is not None:
            height, width = image.shape[:2]
            ax.imshow(overlay, cmap='jet', alpha=0.35, vmin=0, vmax=1, interpolation='bilinear',
                      extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        truth = 'abnormal' if label else 'normal'
        if probability is None:
            ax.set_title(f'{heading}\n{truth}', fontsize=8)
            continue
        correct = (probability > metrics_lib.THRESHOLD) == bool(label)
        ax.set_title(f'{heading}\ntrue {truth}, p(abnormal)={probability:.2f}', fontsize=8,
                     color='darkgreen' if correct else 'darkred')
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def bar_counts(table: pd.DataFrame, title: str, path: str, ylabel: str = 'images') -> str:
    """Grouped bars: index = groups on the x axis, columns = bars within a group."""
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(table.index) + 3), 4))
    table.plot.bar(ax=ax, rot=0)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # Room for the legend above the bars.
    ax.legend(loc='upper right', fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis='y', alpha=0.3)
    return save(fig, path)


def histograms(values: Dict[str, Sequence[float]], title: str, xlabel: str, path: str,
               bins: Optional[Sequence[float]] = None) -> str:
    """One overlaid histogram per key of `values`."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, found in values.items():
        ax.hist(list(found), bins=bins if bins is not None else 20, alpha=0.55, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('count')
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def scatter_sizes(sizes: Dict[str, Tuple[List[int], List[int]]], title: str, path: str) -> str:
    """Image width against height, one colour per key."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, (widths, heights) in sizes.items():
        ax.scatter(widths, heights, s=8, alpha=0.5, label=name)
    ax.set_xlabel('width (px)')
    ax.set_ylabel('height (px)')
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)
