"""The names of the files a run writes to its model_dir: the one place that knows them.

Evaluation writes them (`evaluate.py`; the probe its `probe.json`); the grid, the report and the
page read them, so the study works on runs made elsewhere and copied back. Plain strings only:
importing this module imports nothing of the training stack.
"""
import re

RESULT = 'result.json'  # The newest evaluation's result (overwritten by each evaluation).
PROBE = 'probe.json'  # The frozen-feature probe's result (`simclr_mura.probe`).
FLAGS = 'flags.json'  # The run's settings (`Config.to_dict`).
# Grad-CAM maps of the gallery's images, and where maps peak against the synthetic signs
# (`simclr_mura.gradcam`); the report's gallery overlays the maps.
CLASS_ACTIVATION_MAPS = 'class_activation_maps.npz'
SIGN_LOCALIZATION = 'sign_localization.json'
SUMMARIES_GLOB = 'events.out.tfevents.*'  # TensorBoard summaries (training and evaluation).
# The share of the labels a run's --train_split holds (the builder's nested subsets).
LABEL_PERCENT = {'train_1pct': 1, 'train_10pct': 10, 'train': 100}


def result_at_step(step: int) -> str:
    """`result_<step>.json`: the result of the evaluation of the checkpoint at `step`."""
    return f'result_{step}.json'


def predictions_filename(split: str, step: int) -> str:
    """`predictions_<split>_<step>.csv`, with slice characters of the split made file-safe."""
    safe = re.sub(r'[^A-Za-z0-9_.-]+', '_', split).strip('_')
    return f'predictions_{safe}_{step}.csv'
