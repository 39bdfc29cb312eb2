"""The report's gallery: the most confident correct and wrong predictions of one run per part,
with the run's Grad-CAM maps over them when `simclr_mura.gradcam` made some.

Reads runs through the report's `Run` objects (their directory, settings, result, predictions) and
the images from the TFDS split; imports nothing of the training stack.
"""
import io
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from simclr_mura import metrics as metrics_lib
from simclr_mura.study import figures
from simclr_mura.study import html_page
from simclr_mura.study import run_files


def _load_images(dataset: str, data_dir: Optional[str], split: str, image_ids) -> Dict[str, np.ndarray]:
    """The decoded images of `image_ids` from the TFDS split (raises if the data is not there)."""
    import tensorflow_datasets as tfds
    import tfds_mura  # noqa: F401  (registers the builder)
    builder = tfds.builder(dataset, data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(f'{dataset} is not built in {data_dir}')
    wanted = set(image_ids)
    images = {}
    for example in builder.as_dataset(split=split, shuffle_files=False).as_numpy_iterator():
        image_id = example['image_id'].decode('utf-8')
        if image_id in wanted:
            images[image_id] = example['image']
            if len(images) == len(wanted):
                break
    return images


def short_image_name(image_id: str) -> str:
    """'valid/XR_ELBOW/patient11186/study1_positive/image2.png' -> 'patient11186 study1 image2'."""
    pieces = image_id.split('/')[-3:]
    pieces[-2] = pieces[-2].split('_')[0] if len(pieces) > 1 else pieces[-2]
    pieces[-1] = os.path.splitext(pieces[-1])[0]
    return ' '.join(pieces)


def _gallery_run(runs: Sequence) -> Optional[object]:
    """The run the gallery shows: the best study kappa among runs with predictions, those with
    class activation maps (`simclr_mura.gradcam`) first."""
    usable = [r for r in runs if r.predictions is not None and len(r.predictions)]
    if not usable:
        return None
    def kappa(run):
        value = run.result.get('eval/study/overall/kappa')
        return -2.0 if value is None else float(value)
    def has_maps(run):
        return tf.io.gfile.exists(os.path.join(run.dir, run_files.CLASS_ACTIVATION_MAPS))
    return max(usable, key=lambda r: (has_maps(r), kappa(r), r.name))


def write_gallery(runs: Sequence, part: str, figure_dir: str,
                  data_dir: Optional[str]) -> html_page.Figure:
    """The gallery figure of one part, or a Figure with a note saying why there is none."""
    run = _gallery_run(runs)
    title = f'Most confident correct and wrong predictions, {part}'
    if run is None:
        return html_page.Figure(title, None, 'No predictions to show.')
    chosen = metrics_lib.confident_examples(run.predictions)
    source = data_dir or run.settings.get('data_dir')
    try:
        images = _load_images(run.settings['dataset'], source, run.result['eval_split'],
                              chosen['image_id'])
    except Exception as e:  # Data elsewhere (runs copied back from another machine): say so.
        return html_page.Figure(title, None, f'Gallery skipped: the images of {run.settings.get("dataset")} '
                                f'were not found in {source} ({type(e).__name__}: {str(e)[:200]}). '
                                'Pass --data_dir to show them.')
    maps = read_class_activation_maps(run.dir, run.result.get('global_step'))
    examples, overlays = [], []
    for row in chosen.itertuples():
        if row.image_id not in images:
            continue
        view, cam = maps.get(row.image_id, (images[row.image_id], None))
        examples.append((f'{row.kind}: {short_image_name(row.image_id)}', view, int(row.label),
                         float(row.probability)))
        overlays.append(cam)
    path = figures.gallery(examples, f'{title} ({run.label}, {run.name})',
                           os.path.join(figure_dir, f'gallery_{part}.png'), overlays=overlays)
    note = f'Run {run.name}: first row(s) correct, then wrong (image level, most confident first).'
    if any(cam is not None for cam in overlays):
        note += (' Overlaid: the Grad-CAM map of p(abnormal) (red where it rises most) on the '
                 "model's input view (python -m simclr_mura.gradcam --run RUN).")
    else:
        note += ' Maps of where the model looks: python -m simclr_mura.gradcam --run RUN.'
    return html_page.Figure(title, path, note)


def read_class_activation_maps(run_dir: str, step) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """image_id -> (model input view, Grad-CAM map) from the run's maps file, when it was made at
    the step the run's result is of; else {}."""
    path = os.path.join(run_dir, run_files.CLASS_ACTIVATION_MAPS)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path, 'rb') as f:
        saved = np.load(io.BytesIO(f.read()))
        if step is not None and int(saved['step']) != int(step):
            return {}  # Maps of an older checkpoint than the predictions shown.
        return {str(i): (v, m) for i, v, m in zip(saved['image_ids'], saved['views'], saved['maps'])}
