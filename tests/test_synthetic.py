"""Tests for tfds_mura.synthetic (and its image renderer tfds_mura.synthetic_images)."""
import collections
import hashlib
import io
import os

import numpy as np
from PIL import Image
import pytest

from tfds_mura import synthetic
from tfds_mura import synthetic_images

# docs/mura.md section 2.3 (train normal, train abnormal, valid normal, valid abnormal).
REAL_IMAGES = {
    'elbow': (2925, 2006, 235, 230), 'finger': (3138, 1968, 214, 247), 'forearm': (1164, 661, 150, 151),
    'hand': (4059, 1484, 271, 189), 'humerus': (673, 599, 148, 140), 'shoulder': (4211, 4168, 285, 278),
    'wrist': (5765, 3987, 364, 295),
}


def _image_counts(studies):
    counts = collections.Counter()
    for s in studies:
        counts[(s.split, s.part, int(s.abnormal))] += s.views
    return counts


def test_scale_one_reproduces_real_image_counts():
    studies = synthetic.plan_synthetic_mura(1.0)
    counts = _image_counts(studies)
    for part, real in REAL_IMAGES.items():
        got = tuple(counts[(split, part, label)] for split in ('train', 'valid') for label in (0, 1))
        assert got == real, part
    assert sum(v for (split, _, _), v in counts.items() if split == 'train') == 36808
    assert sum(v for (split, _, _), v in counts.items() if split == 'valid') == 3197
    # Study counts are free to differ from the paper's table; they stay within 10% of 13,457 / 1,199.
    n_train = sum(s.split == 'train' for s in studies)
    n_valid = sum(s.split == 'valid' for s in studies)
    assert abs(n_train - 13457) < 1346 and abs(n_valid - 1199) < 120


def test_patients_studies_and_views_look_like_mura():
    studies = synthetic.plan_synthetic_mura(1.0)
    train_ids = {s.patient for s in studies if s.split == 'train'}
    valid_ids = {s.patient for s in studies if s.split == 'valid'}
    assert min(train_ids) == 1 and not train_ids & valid_ids
    assert min(valid_ids) == max(train_ids) + 1
    assert 10000 < len(train_ids) < 12500 and 600 < len(valid_ids) < 1000  # real: 11,184 and 783
    per_patient = collections.Counter((s.split, s.patient) for s in studies)
    assert set(per_patient.values()) <= {1, 2, 3}
    for s in studies:
        assert 1 <= s.views <= (8 if s.part in ('shoulder', 'humerus') else 5)
    parts_of = collections.defaultdict(set)
    for s in studies:
        parts_of[s.patient].add(s.part)
    assert any(len(p) > 1 for p in parts_of.values())  # some folder names recur under two parts
    first = studies[0]
    assert first.path == 'train/XR_SHOULDER/patient00001/study1_positive'


@pytest.mark.parametrize('scale', [0.001, 0.05])
def test_small_scales_keep_proportions_and_every_cell(scale):
    counts = _image_counts(synthetic.plan_synthetic_mura(scale))
    for part, real in REAL_IMAGES.items():
        for col, (split, label) in enumerate([(sp, lab) for sp in ('train', 'valid') for lab in (0, 1)]):
            assert counts[(split, part, label)] == max(1, round(real[col] * scale))


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match='scale'):
        synthetic.plan_synthetic_mura(0.0)
    with pytest.raises(ValueError, match='knee'):
        synthetic.plan_synthetic_mura(0.01, parts=('knee',))


def _tree_digest(root):
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, 'rb') as f:
                digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope='module')
def small_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp('synthetic')
    summary = synthetic.write_synthetic_mura(str(out / 'a'), scale=0.004, parts=('elbow', 'hand', 'shoulder'),
                                             seed=3, quirks=True, rgb_fraction=0.2)
    return out, summary


def test_written_tree_matches_the_release_layout(small_tree):
    _, summary = small_tree
    root = summary.root
    assert sorted(f for f in os.listdir(root) if f.endswith('.csv')) == [
        'train_image_paths.csv', 'train_labeled_studies.csv', 'valid_image_paths.csv', 'valid_labeled_studies.csv']
    listed = 0
    for split in ('train', 'valid'):
        with open(os.path.join(root, f'{split}_image_paths.csv')) as f:
            rows = f.read().splitlines()
        for row in rows:
            assert row.startswith(f'MURA-v1.1/{split}/XR_') and row.endswith('.png') and ',' not in row
            assert os.path.isfile(os.path.join(os.path.dirname(root), row))
        with open(os.path.join(root, f'{split}_labeled_studies.csv')) as f:
            for row in f.read().splitlines():
                path, label = row.split(',')
                assert path.endswith('/') and label == ('1' if '_positive/' in path else '0')
        listed += len(rows)
    assert listed == summary.num_images == sum(s.views for s in summary.studies)


def test_images_are_radiograph_like_pngs(small_tree):
    _, summary = small_tree
    shapes, modes = [], collections.Counter()
    for s in summary.studies:
        for v in range(1, s.views + 1):
            with Image.open(os.path.join(summary.root, s.path, f'image{v}.png')) as img:
                assert img.format == 'PNG'
                modes[img.mode] += 1
                shapes.append(img.size)
                if img.mode == 'RGB':
                    r, g, b = img.split()
                    assert r.tobytes() == g.tobytes() == b.tobytes()
    assert set(modes) == {'L', 'RGB'} and modes['RGB'] == len(summary.rgb_images)
    widths, heights = np.array(shapes).T
    assert widths.min() >= 89 and heights.min() >= 89 and max(widths.max(), heights.max()) <= 512
    assert np.mean(heights > widths) > 0.6  # mostly portrait


def test_quirks_are_written_but_not_listed(small_tree):
    _, summary = small_tree
    sidecars, ds_stores = [], []
    for folder, _, files in os.walk(summary.root):
        sidecars += [os.path.join(folder, f) for f in files if f.startswith('._')]
        ds_stores += [os.path.join(folder, f) for f in files if f == '.DS_Store']
    assert len(sidecars) >= 2 and len(ds_stores) >= 3
    for path in sidecars:
        with open(path, 'rb') as f:
            data = f.read()
        assert data[:4] == bytes.fromhex('00051607')  # AppleDouble magic, not a PNG
        with pytest.raises(Exception):
            Image.open(io.BytesIO(data)).load()
    csv_text = ''.join(open(os.path.join(summary.root, n)).read() for n in os.listdir(summary.root)
                       if n.endswith('.csv'))
    assert '._image' not in csv_text and '.DS_Store' not in csv_text


def test_same_seed_gives_byte_identical_tree(small_tree):
    out, summary = small_tree
    again = synthetic.write_synthetic_mura(str(out / 'b'), scale=0.004, parts=('elbow', 'hand', 'shoulder'),
                                           seed=3, quirks=True, rgb_fraction=0.2, workers=1)
    assert _tree_digest(summary.root) == _tree_digest(again.root)
    other = synthetic.write_synthetic_mura(str(out / 'c'), scale=0.004, parts=('elbow', 'hand', 'shoulder'),
                                           seed=4, quirks=True, rgb_fraction=0.2)
    assert _tree_digest(summary.root) != _tree_digest(other.root)


def test_refuses_to_overwrite_unless_asked(small_tree):
    out, _ = small_tree
    with pytest.raises(FileExistsError):
        synthetic.write_synthetic_mura(str(out / 'a'), scale=0.001, parts=('elbow',))


def _views(part, abnormal, n, seed):
    images = []
    for i in range(n):
        sign = synthetic_images.draw_study_sign(np.random.default_rng([seed, i]), abnormal)
        images.append(synthetic_images.render_view(part, (seed, i), sign, np.random.default_rng([seed, i, 1])))
    return images


def _auc(neg, pos):
    """Probability that a random positive scores above a random negative."""
    neg, pos = np.asarray(neg, float), np.asarray(pos, float)
    return float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))


def test_abnormal_sign_is_visible_but_not_a_brightness_shortcut():
    for part in ('elbow', 'hand'):
        normal, abnormal = _views(part, False, 40, 1), _views(part, True, 40, 2)
        for stat in (np.max, np.mean, lambda im: np.percentile(im, 99)):
            auc = _auc([stat(im) for im in normal], [stat(im) for im in abnormal])
            assert 0.2 < auc < 0.8, (part, auc)
    # The sign changes a visible region of the same view, not a couple of pixels.
    for k in range(6):
        sign = synthetic_images.draw_study_sign(np.random.default_rng([5, k]), True)
        plain = synthetic_images.render_view('forearm', (5, k), None, np.random.default_rng([6, k]))
        marked = synthetic_images.render_view('forearm', (5, k), sign, np.random.default_rng([6, k]))
        assert plain.shape == marked.shape
        assert np.sum(np.abs(plain.astype(int) - marked.astype(int)) > 30) > 100


def test_cli_writes_tree_and_reports_errors(tmp_path, capsys):
    assert synthetic.main(['--out', str(tmp_path), '--scale', '0.001', '--parts', 'humerus', '--workers', '1']) == 0
    assert 'humerus' in capsys.readouterr().out
    assert os.path.isfile(tmp_path / 'MURA-v1.1' / 'valid_labeled_studies.csv')
    assert synthetic.main(['--out', str(tmp_path), '--scale', '0.001', '--parts', 'humerus']) == 1
    assert 'already exists' in capsys.readouterr().err


def test_sign_strength_changes_only_abnormal_views_and_is_deterministic():
    from tfds_mura import synthetic_images as si

    def view(abnormal, strength):
        sign = si.draw_study_sign(np.random.default_rng([0, 9, 5]), abnormal, strength)
        return si.render_view('elbow', (0, 8, 5), sign, np.random.default_rng([0, 7, 5, 1]))

    assert np.array_equal(view(False, 1.0), view(False, 3.0))
    usual, strong = view(True, 1.0), view(True, 3.0)
    assert np.array_equal(strong, view(True, 3.0))
    assert (usual != strong).mean() > 0.001  # a visibly larger sign
    with pytest.raises(ValueError, match='sign_strength'):
        synthetic.write_synthetic_mura('unused', scale=0.01, sign_strength=9)


@pytest.mark.parametrize('part', synthetic.PARTS)
def test_every_sign_is_drawn_inside_the_centre_crop(part):
    """An abnormal view differs from the same view without its sign inside the central 87.5%
    square (the evaluation crop), for every study drawn: no label without pixels behind it."""
    from tfds_mura import synthetic_images as si
    for study in range(12):
        sign = si.draw_study_sign(np.random.default_rng([study, 1]), True)
        normal = si.render_view(part, (study,), None, np.random.default_rng([study, 2]))
        abnormal = si.render_view(part, (study,), sign, np.random.default_rng([study, 2]))
        height, width = normal.shape
        side = int(min(height, width) * 0.875)
        top, left = (height - side) // 2, (width - side) // 2
        crop = (slice(top, top + side), slice(left, left + side))
        changed = np.abs(abnormal[crop].astype(int) - normal[crop].astype(int)) > 40
        assert changed.sum() > 20, (part, study, sign)


def test_sign_position_stays_within_the_sign_radius():
    from tfds_mura import synthetic_images as si
    bone = (0.0, 0.1, 0.0, 0.85, 0.05)  # a forearm bone starting at the joint, pointing away
    for where in np.linspace(0.3, 0.7, 9):
        t = si.sign_position(bone, where)
        assert 0.1 + 0.75 * t <= si.SIGN_RADIUS + 1e-9
    assert si.sign_position((0.5, 0.5, 0.9, 0.9, 0.05), 0.5) == 0.0  # nearest end when out of reach


@pytest.mark.parametrize('part', ['elbow', 'hand', 'shoulder'])
def test_sign_box_holds_the_sign_the_view_draws(part):
    """An implant changes the view only inside its box (the rest of the view draws the same
    pixels); a fracture's box holds the gap where the bone went dark."""
    from tfds_mura import synthetic_images as si
    seen = collections.Counter()
    for study in range(16):
        sign = si.draw_study_sign(np.random.default_rng([study, 1]), True, 1.0 + study % 3)
        normal = si.render_view(part, (study,), None, np.random.default_rng([study, 2]))
        abnormal = si.render_view(part, (study,), sign, np.random.default_rng([study, 2]))
        box = si.sign_box(part, (study,), sign, np.random.default_rng([study, 2]))
        assert si.sign_box(part, (study,), None, np.random.default_rng([study, 2])) is None
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= normal.shape[1] and 0 <= y0 < y1 <= normal.shape[0]
        # The box is the sign, not the view: a small share of the image.
        assert (x1 - x0) * (y1 - y0) < 0.2 * normal.size, (part, study, box)
        inside = np.zeros(normal.shape, bool)
        inside[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = True  # the bilinear upsampling spreads a pixel
        change = abnormal.astype(int) - normal.astype(int)
        seen[sign.kind] += 1
        if sign.kind == 'implant':
            assert (np.abs(change) > 0).sum() > 20
            assert not np.any(np.abs(change[~inside]) > 0), (part, study)
        else:
            assert (change[inside] < -40).sum() > 5, (part, study)  # the dark gap
    assert seen['implant'] and seen['fracture']


def test_signs_file_lists_every_abnormal_image_with_its_box(small_tree):
    out, summary = small_tree
    rows = open(os.path.join(out, 'a', synthetic.SIGNS_FILE)).read().splitlines()
    assert rows[0] == ','.join(synthetic.SIGNS_COLUMNS)
    boxes = {}
    for row in rows[1:]:
        image_id, kind, *box = row.split(',')
        assert kind in ('fracture', 'implant')
        boxes[image_id] = tuple(int(v) for v in box)
    abnormal = {f'{s.path}/image{v}.png' for s in summary.studies if s.abnormal
                for v in range(1, s.views + 1)}
    assert set(boxes) == abnormal
    for image_id, (x0, y0, x1, y1) in boxes.items():
        width, height = Image.open(os.path.join(summary.root, image_id)).size
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
