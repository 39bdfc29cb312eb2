"""The report's probe table: every `probe.json` below a model root (`simclr_mura.probe`) as rows of
the pretrained encoder's study AUROC against the random encoders'."""
import json
import os
from typing import Dict, List

import pandas as pd
import tensorflow as tf

from simclr_mura.study import run_files


def find_probes(model_root: str) -> List[Dict]:
    """Every probe.json below `model_root` (written by `simclr_mura.probe`)."""
    found = []
    for directory, _, files in sorted(tf.io.gfile.walk(model_root)):
        if run_files.PROBE in files:
            with tf.io.gfile.GFile(os.path.join(directory, run_files.PROBE)) as f:
                result = json.load(f)
            if result:
                found.append(result)
    return found


def probe_rows(probes: List[Dict]) -> List[List[str]]:
    """The probe table (header first): per dataset and training split, the pretrained encoder's
    study AUROC with its CI beside the random encoders' mean ± sd over seeds."""
    rows = [['dataset', 'encoder', 'labels', 'n train', 'pretrained: study AUROC [95% CI]',
             'random init: study AUROC mean ± sd (seeds)', 'difference']]
    for result in probes:
        table = pd.DataFrame(result.get('rows', []))
        if table.empty:
            continue
        # The probed encoder's run: <run>/ckpt-<step> -> <run>.
        encoder = os.path.basename(os.path.dirname(str(result.get('checkpoint', '')))) or '?'
        for split, group in table.groupby('train_split', sort=False):
            pretrained = group[group['encoder'] == 'pretrained']
            random = group[group['encoder'] == 'random']['study_auroc'].astype(float)
            percent = run_files.LABEL_PERCENT.get(split)
            cell, difference = '-', '-'
            if len(pretrained):
                first = pretrained.iloc[0]
                low, high = first['study_auroc_ci']
                cell = f'{first["study_auroc"]:.3f} [{low:.2f}, {high:.2f}]'
                if len(random):
                    difference = f'{first["study_auroc"] - random.mean():+.3f}'
            spread = '' if len(random) < 2 else f' ± {random.std():.3f}'
            rows.append([str(result.get('dataset', '?')), encoder, f'{percent}%' if percent else split,
                         str(int(group['num_train_images'].iloc[0])),
                         cell, f'{random.mean():.3f}{spread} ({len(random)})' if len(random) else '-',
                         difference])
    return rows
