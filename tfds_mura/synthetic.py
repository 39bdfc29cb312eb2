"""Synthetic MURA-v1.1 trees for tests, demos and benchmarks.

``python -m tfds_mura.synthetic --out DIR [--scale S] [--parts elbow,hand] [--seed N] [--quirks]``
writes ``DIR/MURA-v1.1/`` laid out exactly like the real release: the four header-less
CSVs and ``train|valid/XR_<PART>/patientNNNNN/studyK_positive|negative/imageM.png``.
Beside it, ``DIR/synthetic_signs.csv`` (not part of MURA) says where each abnormal image's sign
was drawn: image_id (the path relative to MURA-v1.1/, as the dataset's image_id), kind
(fracture/implant) and the box x0, y0, x1, y1 in pixels of the image (x1, y1 exclusive); the
class-activation-map check (`simclr_mura.gradcam --signs`) reads it.

At ``scale=1.0`` the per-part, per-split, per-label image counts equal the real ones
(36,808 train + 3,197 valid = 40,005 images); smaller scales keep the proportions and at
least one study per part/split/label. The same seed gives a byte-identical tree.
"""
import argparse
import collections
import dataclasses
import math
import multiprocessing
import os
import shutil
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfds_mura import synthetic_images
from tfds_mura.mura.mura_source import PARTS


# Real MURA-v1.1 image counts (docs/mura.md section 2.3): part -> (train normal,
# train abnormal, valid normal, valid abnormal).
IMAGE_COUNTS = {
    'elbow': (2925, 2006, 235, 230), 'finger': (3138, 1968, 214, 247),
    'forearm': (1164, 661, 150, 151), 'hand': (4059, 1484, 271, 189),
    'humerus': (673, 599, 148, 140), 'shoulder': (4211, 4168, 285, 278),
    'wrist': (5765, 3987, 364, 295),
}
# Real study counts (paper Table 1, docs/mura.md section 2.2), same column order.
STUDY_COUNTS = {
    'elbow': (1094, 660, 92, 66), 'finger': (1280, 655, 92, 83), 'forearm': (590, 287, 69, 64),
    'hand': (1497, 521, 101, 66), 'humerus': (321, 271, 68, 67), 'shoulder': (1364, 1457, 99, 95),
    'wrist': (2134, 1326, 140, 97),
}
# Order of the parts inside the real CSVs (train starts with XR_SHOULDER/patient00001,
# valid with XR_WRIST/patient11185).
CSV_PART_ORDER = {
    'train': ('shoulder', 'humerus', 'finger', 'elbow', 'wrist', 'forearm', 'hand'),
    'valid': ('wrist', 'forearm', 'elbow', 'finger', 'hand', 'humerus', 'shoulder'),
}
# Studies per patient: train has ~1.2 (13,457 / 11,184), valid ~1.5 (1,199 / 783).
_STUDIES_PER_PATIENT = {'train': (0.83, 0.15, 0.02), 'valid': (0.55, 0.37, 0.08)}
_MAX_VIEWS = {'shoulder': 8, 'humerus': 7}
_CROSS_PART_FRACTION = 0.02  # share of patients whose folder name recurs under a second part
_SPLITS = ('train', 'valid')


@dataclasses.dataclass(frozen=True)
class SyntheticStudy:
    """One study of the synthetic tree (``index`` seeds its images)."""
    split: str
    part: str
    patient: int
    number: int
    abnormal: bool
    views: int
    index: int

    @property
    def path(self) -> str:
        """Study folder relative to MURA-v1.1, without trailing slash."""
        suffix = 'positive' if self.abnormal else 'negative'
        return f'{self.split}/XR_{self.part.upper()}/patient{self.patient:05d}/study{self.number}_{suffix}'


@dataclasses.dataclass
class SyntheticSummary:
    """What ``write_synthetic_mura`` wrote."""
    root: str
    studies: List[SyntheticStudy]
    image_counts: Dict[Tuple[str, str, int], int]   # (split, part, label) -> images
    rgb_images: List[str]                            # image paths (relative to root) saved as RGB
    seconds: float = 0.0

    @property
    def num_images(self) -> int:
        """Total number of images listed in the CSVs."""
        return sum(self.image_counts.values())


def _scaled(count: int, scale: float) -> int:
    return max(1, int(round(count * scale)))


def _view_counts(rng: np.random.Generator, images: int, studies: int, cap: int) -> List[int]:
    """``studies`` view counts in 1..cap summing exactly to ``images``."""
    studies = min(max(studies, math.ceil(images / cap)), images)
    mean_extra = images / studies - 1.0
    views = np.clip(1 + rng.poisson(mean_extra, studies), 1, cap)
    while views.sum() != images:
        if views.sum() > images:
            candidates = np.flatnonzero(views > 1)
            views[candidates[rng.integers(len(candidates))]] -= 1
        else:
            candidates = np.flatnonzero(views < cap)
            views[candidates[rng.integers(len(candidates))]] += 1
    return [int(v) for v in views]


def _patient_groups(rng: np.random.Generator, labels: List[int], split: str) -> List[List[int]]:
    """Shuffles study labels and chunks them into patients of 1-3 studies."""
    order = list(rng.permutation(len(labels)))
    groups = []
    while order:
        size = int(rng.choice(3, p=_STUDIES_PER_PATIENT[split])) + 1
        groups.append(order[:size])
        order = order[size:]
    return groups


def plan_synthetic_mura(scale: float = 1.0, parts: Sequence[str] = PARTS, seed: int = 0) -> List[SyntheticStudy]:
    """The studies of a synthetic tree, in CSV order, without writing anything.

    Image counts per (split, part, label) are ``round(real * scale)`` (at least 1).
    """
    if not 0 < scale <= 1.0:
        raise ValueError(f'scale must be in (0, 1], got {scale}')
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f'unknown body part(s) {unknown or parts}; choose from {", ".join(PARTS)}')
    studies: List[SyntheticStudy] = []
    next_patient = 1
    for split_idx, split in enumerate(_SPLITS):
        # slot = (part, [(label, views), ...]) for one patient within one part.
        slots = []
        for part in CSV_PART_ORDER[split]:
            if part not in parts:
                continue
            part_rng = np.random.default_rng([seed, 1, split_idx, PARTS.index(part)])
            entries = []
            for label in (0, 1):
                col = 2 * split_idx + label
                n_img = _scaled(IMAGE_COUNTS[part][col], scale)
                n_study = _scaled(STUDY_COUNTS[part][col], scale)
                views = _view_counts(part_rng, n_img, n_study, _MAX_VIEWS.get(part, 5))
                entries += [(label, v) for v in views]
            for group in _patient_groups(part_rng, [e[0] for e in entries], split):
                slots.append((part, [entries[i] for i in group]))
        owner = _merge_cross_part(np.random.default_rng([seed, 2, split_idx]), slots)
        patient_of: Dict[int, int] = {}
        for slot_idx, (part, entries) in enumerate(slots):
            root = owner[slot_idx]
            if root not in patient_of:
                patient_of[root] = next_patient
                next_patient += 1
            for number, (label, views) in enumerate(entries, start=1):
                studies.append(SyntheticStudy(split, part, patient_of[root], number, bool(label), views,
                                              len(studies)))
    return studies


def _merge_cross_part(rng: np.random.Generator, slots) -> List[int]:
    """Maps each slot to the slot whose patient id it shares (itself for most slots).

    A few single-study slots borrow the id of an earlier slot of another body part, so the
    same patient folder name recurs under two parts (as reported for the real data).
    """
    owner = list(range(len(slots)))
    taken = set()
    for idx, (part, entries) in enumerate(slots):
        if len(entries) != 1 or rng.random() >= _CROSS_PART_FRACTION or idx == 0:
            continue
        partner = int(rng.integers(0, idx))
        p_part, p_entries = slots[partner]
        if p_part != part and len(p_entries) <= 2 and partner not in taken and owner[partner] == partner:
            owner[idx] = partner
            taken.add(partner)
    return owner


def _appledouble(rng: np.random.Generator) -> bytes:
    """Bytes shaped like a macOS AppleDouble ``._`` sidecar (not a PNG)."""
    header = bytes.fromhex('00051607' '00020000') + b'Mac OS X        ' + bytes.fromhex('0002')
    entries = bytes.fromhex('00000009 00000032 00000EB0 00000002 00000EE2 0000011E'.replace(' ', ''))
    body = rng.integers(0, 256, 4096 - len(header) - len(entries), dtype=np.uint8).tobytes()
    return header + entries + body


_DS_STORE = b'\x00\x00\x00\x01Bud1' + b'\x00' * 6140


SIGNS_FILE = 'synthetic_signs.csv'
SIGNS_COLUMNS = ('image_id', 'kind', 'x0', 'y0', 'x1', 'y1')


def _write_study(task) -> Tuple[List[str], List[tuple]]:
    """Renders and writes every view of one study; returns the views saved as RGB and the
    rows of ``SIGNS_FILE`` of its views (none for a normal study)."""
    root, study, seed, rgb_fraction, sign_strength = task
    folder = os.path.join(root, study.path)
    os.makedirs(folder, exist_ok=True)
    sign = synthetic_images.draw_study_sign(np.random.default_rng([seed, 9, study.index]), study.abnormal,
                                            sign_strength)
    rgb, signs = [], []
    for view in range(1, study.views + 1):
        view_seed = [seed, 7, study.index, view]
        pixels = synthetic_images.render_view(study.part, (seed, 8, study.index), sign,
                                              np.random.default_rng(view_seed))
        as_rgb = np.random.default_rng([seed, 10, study.index, view]).random() < rgb_fraction
        with open(os.path.join(folder, f'image{view}.png'), 'wb') as f:
            f.write(synthetic_images.encode_png(pixels, rgb=as_rgb))
        if as_rgb:
            rgb.append(f'{study.path}/image{view}.png')
        box = synthetic_images.sign_box(study.part, (seed, 8, study.index), sign,
                                        np.random.default_rng(view_seed))
        if box is not None:
            signs.append((f'{study.path}/image{view}.png', sign.kind) + tuple(box))
    return rgb, signs


def _write_csvs(root: str, studies: Sequence[SyntheticStudy]) -> None:
    for split in _SPLITS:
        rows = [s for s in studies if s.split == split]
        with open(os.path.join(root, f'{split}_image_paths.csv'), 'w', newline='') as f:
            f.writelines(f'MURA-v1.1/{s.path}/image{v}.png\n' for s in rows for v in range(1, s.views + 1))
        with open(os.path.join(root, f'{split}_labeled_studies.csv'), 'w', newline='') as f:
            f.writelines(f'MURA-v1.1/{s.path}/,{int(s.abnormal)}\n' for s in rows)


def _write_quirks(root: str, studies: Sequence[SyntheticStudy], seed: int) -> None:
    """AppleDouble sidecars next to a few images, and .DS_Store files in a few folders."""
    rng = np.random.default_rng([seed, 11])
    for split in _SPLITS:
        rows = [s for s in studies if s.split == split]
        for k in rng.choice(len(rows), size=min(2, len(rows)), replace=False):
            study = rows[int(k)]
            view = int(rng.integers(1, study.views + 1))
            with open(os.path.join(root, study.path, f'._image{view}.png'), 'wb') as f:
                f.write(_appledouble(rng))
        folders = {split} | {os.path.dirname(os.path.dirname(s.path)) for s in rows}
        folders |= {rows[int(k)].path for k in rng.choice(len(rows), size=min(3, len(rows)), replace=False)}
        for folder in sorted(folders):
            with open(os.path.join(root, folder, '.DS_Store'), 'wb') as f:
                f.write(_DS_STORE)
    with open(os.path.join(root, '.DS_Store'), 'wb') as f:
        f.write(_DS_STORE)


def write_synthetic_mura(out_dir: str, scale: float = 0.05, parts: Sequence[str] = PARTS, seed: int = 0,
                         quirks: bool = False, rgb_fraction: float = 0.01, workers: int = 2,
                         overwrite: bool = False, sign_strength: float = 1.0) -> SyntheticSummary:
    """Writes ``out_dir/MURA-v1.1/`` and ``out_dir/synthetic_signs.csv``; returns a summary.

    Args:
      out_dir: parent directory; ``MURA-v1.1/`` is created inside it.
      scale: fraction of the real image counts (1.0 = the real 40,005 images).
      parts: body parts to include (lower-case names, see ``PARTS``).
      seed: the tree is a pure function of (scale, parts, seed, quirks, rgb_fraction, sign_strength).
      quirks: add macOS ``._imageN.png`` sidecars and ``.DS_Store`` files.
      rgb_fraction: share of images saved as 3-channel RGB PNGs (the rest are 8-bit gray).
      workers: processes rendering images (1 renders in this process).
      overwrite: replace an existing ``MURA-v1.1/`` instead of refusing.
      sign_strength: scales how visible the abnormal signs are (1.0: the usual tree; the CPU
        demo uses more, so that its small low-resolution models can see them).
    """
    if not 0 <= rgb_fraction <= 1:
        raise ValueError(f'rgb_fraction must be in [0, 1], got {rgb_fraction}')
    if not 0.5 <= sign_strength <= 5:
        raise ValueError(f'sign_strength must be in [0.5, 5], got {sign_strength}')
    start = time.time()
    studies = plan_synthetic_mura(scale, tuple(parts), seed)
    root = os.path.join(out_dir, 'MURA-v1.1')
    if os.path.exists(root):
        if not overwrite:
            raise FileExistsError(f'{root} already exists; pass overwrite=True (--overwrite) to replace it')
        shutil.rmtree(root)
    os.makedirs(root)
    tasks = [(root, s, seed, rgb_fraction, sign_strength) for s in studies]
    if workers > 1:
        with multiprocessing.get_context('fork').Pool(workers) as pool:
            written = pool.map(_write_study, tasks, chunksize=16)
    else:
        written = [_write_study(t) for t in tasks]
    rgb_lists = [rgb for rgb, _ in written]
    _write_csvs(root, studies)
    with open(os.path.join(out_dir, SIGNS_FILE), 'w', newline='') as f:
        f.write(','.join(SIGNS_COLUMNS) + '\n')
        f.writelines(','.join(str(v) for v in row) + '\n' for _, signs in written for row in signs)
    if quirks:
        _write_quirks(root, studies, seed)
    counts = collections.Counter()
    for s in studies:
        counts[(s.split, s.part, int(s.abnormal))] += s.views
    return SyntheticSummary(root=root, studies=studies, image_counts=dict(counts),
                            rgb_images=sorted(p for lst in rgb_lists for p in lst), seconds=time.time() - start)


def format_summary(summary: SyntheticSummary) -> str:
    """A per-part table of image counts (train normal/abnormal, valid normal/abnormal)."""
    lines = [f'{"part":<10}{"train-":>8}{"train+":>8}{"valid-":>8}{"valid+":>8}']
    parts = sorted({p for _, p, _ in summary.image_counts})
    for part in parts:
        cells = [summary.image_counts.get((sp, part, lab), 0) for sp in _SPLITS for lab in (0, 1)]
        lines.append(f'{part:<10}' + ''.join(f'{c:>8}' for c in cells))
    patients = len({(s.split, s.patient) for s in summary.studies})
    lines.append(f'{summary.num_images} images, {len(summary.studies)} studies, {patients} patients, '
                 f'{len(summary.rgb_images)} RGB, written to {summary.root} in {summary.seconds:.1f} s')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog='python -m tfds_mura.synthetic', description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='parent directory; MURA-v1.1/ is written inside it')
    parser.add_argument('--scale', type=float, default=0.05, help='fraction of the real counts (1.0 = 40,005 images)')
    parser.add_argument('--parts', default=','.join(PARTS), help='comma-separated body parts')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--quirks', action='store_true', help='add ._imageN.png sidecars and .DS_Store files')
    parser.add_argument('--rgb_fraction', type=float, default=0.01, help='share of images saved as RGB PNG')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--sign_strength', type=float, default=1.0,
                        help='scale of the abnormal signs (gap, shift, implant); >1 is easier to see')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing MURA-v1.1/')
    args = parser.parse_args(argv)
    parts = [p.strip().lower() for p in args.parts.split(',') if p.strip()]
    try:
        summary = write_synthetic_mura(args.out, scale=args.scale, parts=parts, seed=args.seed, quirks=args.quirks,
                                       rgb_fraction=args.rgb_fraction, workers=args.workers,
                                       overwrite=args.overwrite, sign_strength=args.sign_strength)
    except (ValueError, FileExistsError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
