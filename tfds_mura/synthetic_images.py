"""Radiograph-like synthetic images for the synthetic MURA generator.

Each body part is a small list of "capsules" (line segments with a radius) standing in
for bones, drawn bright on a dark, noisy background with soft tissue around them. An
abnormal study carries one of two signs in every view:

* ``fracture``: one long bone is cut into two pieces with a thin dark gap and a slight
  misalignment (the joints of hand and finger have natural gaps too, so the gap alone
  is not a give-away: where it sits matters);
* ``implant``: a saturated metal plate with screws along a bone.

A sign sits on the part of its bone within ``SIGN_RADIUS`` of the plate's centre, so that every
view's centre crop shows it (as a radiograph is framed on the region in question).

Normal images often carry a saturated lateral marker ("L"/"R" block) as real
radiographs do, so that "has very bright pixels" is not a shortcut for "abnormal".

Everything is drawn with numpy at half resolution (radiograph content is smooth) and
upsampled with PIL; only the grain noise is added at full resolution.
"""
import dataclasses
import io
import math
import struct
import zlib
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

# A capsule: (x0, y0, x1, y1, radius) in "shape units" (1.0 = the image's short side).
Capsule = Tuple[float, float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Bones of one body part; ``long_bones`` index the capsules a sign may sit on."""
    bones: Tuple[Capsule, ...]
    long_bones: Tuple[int, ...]
    tissue_scale: float = 2.4


def _ray(x0, y0, angle_deg, lengths, radius, gap=0.025) -> List[Capsule]:
    """Consecutive segments (phalanges) along a ray, separated by joint gaps."""
    dx, dy = math.sin(math.radians(angle_deg)), -math.cos(math.radians(angle_deg))
    out, x, y = [], x0, y0
    for length in lengths:
        x1, y1 = x + dx * length, y + dy * length
        out.append((x, y, x1, y1, radius))
        x, y = x1 + dx * (gap + 2 * radius), y1 + dy * (gap + 2 * radius)
        radius *= 0.85
    return out


def _carpals(cx, cy, r) -> List[Capsule]:
    """Eight small carpal bones in two rows of four."""
    out = []
    for row in range(2):
        for col in range(4):
            x = cx + (col - 1.5) * 2.3 * r
            y = cy + (row - 0.5) * 2.4 * r
            out.append((x - 0.3 * r, y, x + 0.3 * r, y, r))
    return out


def _anatomy(part: str, rng: np.random.Generator) -> Anatomy:
    """The bones of ``part`` with small per-study variations."""
    j = lambda s=0.02: float(rng.normal(0.0, s))  # noqa: E731  (tiny jitter helper)
    if part == 'humerus':
        bones = [(j(), -0.62, j(), 0.45, 0.075 + j(0.005)), (0.0, -0.62, 0.06, -0.66, 0.14),
                 (-0.11, 0.5, 0.11, 0.5, 0.065)]
        return Anatomy(tuple(bones), (0,))
    if part == 'forearm':
        bones = [(-0.09 + j(), -0.68, -0.06, 0.68, 0.055), (0.09 + j(), -0.68, 0.07, 0.68, 0.048),
                 (-0.13, -0.7, 0.13, -0.7, 0.05)]
        return Anatomy(tuple(bones), (0, 1), 3.2)
    if part == 'elbow':
        flex = math.radians(rng.uniform(0, 60))
        fx, fy = math.sin(flex), math.cos(flex)
        bones = [(j(), -0.75, 0.0, -0.05, 0.075), (-0.12, 0.0, 0.12, 0.02, 0.07)]
        for off, rad in ((-0.06, 0.05), (0.06, 0.045)):
            x0, y0 = off * fy, 0.1 + off * fx * 0.3
            bones.append((x0, y0, x0 + 0.75 * fx, y0 + 0.75 * fy, rad))
        return Anatomy(tuple(bones), (0, 2, 3))
    if part == 'wrist':
        bones = [(-0.08, 0.75, -0.07, 0.17, 0.075), (0.09, 0.75, 0.08, 0.2, 0.05)]
        bones += _carpals(0.0, 0.0, 0.045)
        for k in range(5):
            bones.append((-0.12 + 0.06 * k, -0.12, -0.22 + 0.11 * k, -0.62, 0.03))
        return Anatomy(tuple(bones), (0, 1, 10, 11, 12))
    if part == 'hand':
        bones = _carpals(0.0, 0.5, 0.04)
        long_bones = []
        for k in range(5):
            angle = -28 + 14 * k + j(2) if k else -55 + j(3)
            x0 = -0.14 + 0.07 * k
            ray = _ray(x0, 0.38, angle, (0.3, 0.2, 0.12, 0.08)[: 3 if k == 0 else 4], 0.032)
            long_bones += [len(bones), len(bones) + 1]
            bones += ray
        return Anatomy(tuple(bones), tuple(long_bones), 2.0)
    if part == 'finger':
        bones = _ray(j(), 0.8, j(4), (0.45, 0.38, 0.25, 0.16), 0.085, gap=0.045)
        return Anatomy(tuple(bones), (0, 1, 2), 2.2)
    if part == 'shoulder':
        bones = [(0.1, 0.05, 0.12, 0.08, 0.17), (0.14, 0.15, 0.18, 0.8, 0.085),
                 (-0.65, -0.38, 0.15, -0.3, 0.045), (-0.08, -0.1, -0.45, -0.22, 0.035),
                 (-0.08, 0.1, -0.4, 0.62, 0.035), (-0.45, -0.22, -0.4, 0.62, 0.03),
                 (-0.12, -0.24, 0.22, -0.2, 0.035)]
        return Anatomy(tuple(bones), (1, 2))
    raise ValueError(f'unknown body part {part!r}')


@dataclasses.dataclass(frozen=True)
class StudySign:
    """What makes a study abnormal; shared by all its views (None for normal studies)."""
    kind: str          # 'fracture' or 'implant'
    bone: int          # position in Anatomy.long_bones (modulo its length)
    where: float       # position along the bone, 0..1
    angle: float       # gap tilt / screw count seed
    shift: float       # misalignment of the distal piece, in bone radii
    strength: float = 1.0  # scales the gap, the misalignment and the implant's thickness


def draw_study_sign(rng: np.random.Generator, abnormal: bool, strength: float = 1.0) -> Optional[StudySign]:
    """Draws the sign of one study (None when the study is normal).

    ``strength`` > 1 makes the sign easier to see (wider gap, larger shift, thicker implant) for
    small demos at low resolution; 1.0 draws exactly what it always did.
    """
    if not abnormal:
        return None
    return StudySign(kind='fracture' if rng.random() < 0.6 else 'implant', bone=int(rng.integers(0, 8)),
                     where=float(rng.uniform(0.3, 0.7)), angle=float(rng.uniform(-0.5, 0.5)),
                     shift=float(rng.uniform(0.15, 0.45)), strength=float(strength))


# Signs sit within this distance (shape units) of the plate's centre, where every view's centre
# crop shows them: radiographs are framed on the region in question, and a sign drawn outside the
# field of view would be a label the pixels cannot support.
SIGN_RADIUS = 0.3


def sign_position(bone: Capsule, where: float) -> float:
    """The position along ``bone`` (0..1) of a sign drawn at ``where`` (0.3..0.7).

    ``where`` is mapped onto the part of the bone inside ``SIGN_RADIUS`` of the plate's centre
    (onto the point nearest the centre when the bone does not reach that far).
    """
    x0, y0, x1, y1, _ = bone
    dx, dy = x1 - x0, y1 - y0
    a, b, c = dx * dx + dy * dy, 2 * (x0 * dx + y0 * dy), x0 * x0 + y0 * y0 - SIGN_RADIUS ** 2
    disc = b * b - 4 * a * c
    if a <= 0:
        return 0.5
    if disc <= 0:
        return min(1.0, max(0.0, -b / (2 * a)))
    lo = max(0.0, (-b - math.sqrt(disc)) / (2 * a))
    hi = min(1.0, (-b + math.sqrt(disc)) / (2 * a))
    if lo >= hi:  # The disc lies beyond one end of the bone: the nearer end.
        return 0.0 if x0 * x0 + y0 * y0 < x1 * x1 + y1 * y1 else 1.0
    return lo + (hi - lo) * min(1.0, max(0.0, (where - 0.3) / 0.4))


def _apply_fracture(bones: List[Capsule], idx: int, sign: StudySign) -> List[Capsule]:
    x0, y0, x1, y1, r = bones[idx]
    t, gap = sign_position(bones[idx], sign.where), max(0.012, 0.35 * r) * sign.strength
    length = math.hypot(x1 - x0, y1 - y0) + 1e-9
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    mx, my = x0 + ux * length * t, y0 + uy * length * t
    # Pieces end short of the break point by the gap plus their rounded caps.
    back = gap / 2 + r
    sx, sy = -uy * sign.shift * sign.strength * r, ux * sign.shift * sign.strength * r
    first = (x0, y0, mx - ux * back, my - uy * back, r)
    second = (mx + ux * back + sx, my + uy * back + sy, x1 + sx + sign.angle * 0.05, y1 + sy, r)
    return bones[:idx] + [first, second] + bones[idx + 1:]


def _implant(bone: Capsule, sign: StudySign) -> List[Capsule]:
    x0, y0, x1, y1, r = bone
    length = math.hypot(x1 - x0, y1 - y0) + 1e-9
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    nx, ny = -uy, ux
    half = min(0.45, 0.25 + 0.2 * abs(sign.angle)) * length
    t = sign_position(bone, sign.where)
    cx, cy = x0 + ux * length * t, y0 + uy * length * t
    px, py = cx + nx * r * 0.9, cy + ny * r * 0.9
    metal = [(px - ux * half, py - uy * half, px + ux * half, py + uy * half, 0.22 * r * sign.strength)]
    screws = 2 + int(abs(sign.angle) * 6) % 3
    for k in range(screws):
        s = -half * 0.8 + 1.6 * half * k / max(1, screws - 1)
        sx, sy = px + ux * s, py + uy * s
        metal.append((sx, sy, sx - nx * r * 1.8, sy - ny * r * 1.8, 0.12 * r * sign.strength))
    return metal


def _marker(rng: np.random.Generator, aspect: float) -> List[Capsule]:
    """A lateral marker block near a corner ("L"-shaped bright strokes)."""
    hx, hy = (0.5 * aspect, 0.5) if aspect >= 1 else (0.5, 0.5 / aspect)
    x = float(rng.choice([-1, 1])) * (hx - 0.09)
    y = float(rng.choice([-1, 1])) * (hy - 0.1)
    s = 0.035
    return [(x, y - s, x, y + s, 0.008), (x, y + s, x + s * 0.9, y + s, 0.008)]


def _render(canvas_hw: Tuple[int, int], capsules: Sequence[Capsule], unit: float,
            rotation: float, offset: Tuple[float, float], profile: str) -> np.ndarray:
    """Max-composite of capsules on a float canvas; each capsule only touches its bounding box."""
    h, w = canvas_hw
    out = np.zeros((h, w), np.float32)
    cos_t, sin_t = math.cos(rotation), math.sin(rotation)
    for x0, y0, x1, y1, r in capsules:
        pts = []
        for x, y in ((x0, y0), (x1, y1)):
            xr, yr = x * cos_t - y * sin_t, x * sin_t + y * cos_t
            pts.append((w / 2 + (xr + offset[0]) * unit, h / 2 + (yr + offset[1]) * unit))
        (ax, ay), (bx, by) = pts
        rad = max(r * unit, 0.6)
        pad = rad + 2
        xa, xb = int(max(0, min(ax, bx) - pad)), int(min(w, max(ax, bx) + pad + 1))
        ya, yb = int(max(0, min(ay, by) - pad)), int(min(h, max(ay, by) + pad + 1))
        if xa >= xb or ya >= yb:
            continue
        # Broadcast a column of y against a row of x instead of materialising a grid.
        yy = np.arange(ya, yb, dtype=np.float32)[:, None] - np.float32(ay)
        xx = np.arange(xa, xb, dtype=np.float32)[None, :] - np.float32(ax)
        dx, dy = np.float32(bx - ax), np.float32(by - ay)
        denom = dx * dx + dy * dy
        t = np.clip((xx * dx + yy * dy) / denom, 0, 1) if denom > 0 else np.float32(0)
        dist = np.sqrt((xx - t * dx) ** 2 + (yy - t * dy) ** 2) / np.float32(rad)
        if profile == 'bone':
            # Brighter rim (cortex) around a darker core (medulla), soft 1-pixel edge.
            val = (0.72 + 0.28 * np.minimum(dist, 1.0) ** 2) * np.clip((1.0 - dist) * rad + 0.5, 0, 1)
        elif profile == 'metal':
            val = np.clip((1.0 - dist) * rad + 0.5, 0, 1)
        else:  # soft tissue: smooth fall-off
            val = np.clip(1.0 - dist, 0, 1) ** 0.7
        view = out[ya:yb, xa:xb]
        np.maximum(view, val, out=view)
    return out


def _image_size(rng: np.random.Generator) -> Tuple[int, int]:
    """(height, width): mostly portrait, mostly 512 on the long side, a few small ones."""
    if rng.random() < 0.03:
        return int(rng.integers(132, 260)), int(rng.integers(89, 200))
    long_side = 512 if rng.random() < 0.7 else int(rng.integers(260, 512))
    short = int(long_side * rng.uniform(0.55, 0.95))
    return (long_side, short) if rng.random() < 0.85 else (short, long_side)


@dataclasses.dataclass(frozen=True)
class _ViewLayout:
    """Where one view's anatomy lies on its plate: drawn from the view's rng before any pixel."""
    height: int
    width: int
    unit: float  # Pixels of the half-resolution canvas per shape unit.
    rotation: float
    offset: Tuple[float, float]
    bones: Tuple[Capsule, ...]  # With a fracture's two pieces in place of the broken bone.
    tissue: Tuple[Capsule, ...]
    sign_capsules: Tuple[Capsule, ...]  # What the sign consists of (empty for a normal view).
    implant: Tuple[Capsule, ...]  # The implant's metal (empty unless the sign is an implant).

    @property
    def canvas(self) -> Tuple[int, int]:
        return (self.height + 1) // 2, (self.width + 1) // 2


def _layout(part: str, anatomy_rng_seed: Sequence[int], sign: Optional[StudySign],
            rng: np.random.Generator) -> _ViewLayout:
    anatomy = _anatomy(part, np.random.default_rng(list(anatomy_rng_seed)))
    height, width = _image_size(rng)
    h, w = (height + 1) // 2, (width + 1) // 2
    unit = min(h, w) * rng.uniform(0.75, 1.05)
    rotation = rng.uniform(-0.45, 0.45)
    offset = (float(rng.normal(0, 0.06)), float(rng.normal(0, 0.06)))
    bones, metal, sign_capsules = list(anatomy.bones), [], []
    if sign is not None:
        idx = anatomy.long_bones[sign.bone % len(anatomy.long_bones)]
        if sign.kind == 'fracture':
            bones = _apply_fracture(bones, idx, sign)
            # The break: from the end of the first piece to the start of the shifted second one.
            first, second = bones[idx], bones[idx + 1]
            sign_capsules = [(first[2], first[3], second[0], second[1], first[4])]
        else:
            metal = _implant(bones[idx], sign)
            sign_capsules = list(metal)
    tissue = [(x0, y0, x1, y1, r * anatomy.tissue_scale) for x0, y0, x1, y1, r in anatomy.bones]
    return _ViewLayout(height, width, unit, rotation, offset, tuple(bones), tuple(tissue),
                       tuple(sign_capsules), tuple(metal))


def sign_box(part: str, anatomy_rng_seed: Sequence[int], sign: Optional[StudySign],
             rng: np.random.Generator) -> Optional[Tuple[int, int, int, int]]:
    """The box (x0, y0, x1, y1), in pixels of the saved image (x1, y1 exclusive), that holds the
    sign `render_view` draws for the same arguments (a fresh rng of the same seed); None for a
    normal view. A fracture's box holds the gap between its two pieces with their rounded ends,
    an implant's the plate and its screws."""
    if sign is None:
        return None
    layout = _layout(part, anatomy_rng_seed, sign, rng)
    h, w = layout.canvas
    # Every pixel the sign touches on the half-resolution canvas the image is drawn on.
    mask = _render((h, w), layout.sign_capsules, layout.unit, layout.rotation, layout.offset,
                   profile='metal') > 0
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None  # The sign lies outside the plate (cannot happen within SIGN_RADIUS).
    sy, sx = layout.height / h, layout.width / w
    return (int(math.floor(cols.min() * sx)), int(math.floor(rows.min() * sy)),
            min(layout.width, int(math.ceil((cols.max() + 1) * sx))),
            min(layout.height, int(math.ceil((rows.max() + 1) * sy))))


def render_view(part: str, anatomy_rng_seed: Sequence[int], sign: Optional[StudySign],
                rng: np.random.Generator) -> np.ndarray:
    """One radiograph-like uint8 image (H, W) of ``part``.

    ``anatomy_rng_seed`` seeds the study-level anatomy (shared by all views of a study);
    ``rng`` drives everything view-specific (size, pose, contrast, noise).
    """
    layout = _layout(part, anatomy_rng_seed, sign, rng)
    height, width = layout.height, layout.width
    h, w = layout.canvas
    bones, metal, tissue = list(layout.bones), list(layout.implant), list(layout.tissue)
    unit, rotation, offset = layout.unit, layout.rotation, layout.offset
    if rng.random() < 0.6:
        metal = metal + _marker(rng, w / h)
    args = ((h, w), unit, rotation, offset)
    tissue_img = _render(args[0], tissue, *args[1:], profile='tissue')
    bone_img = _render(args[0], bones, *args[1:], profile='bone')
    img = (np.float32(0.06) + tissue_img * np.float32(0.22 * rng.uniform(0.7, 1.2))
           + bone_img * np.float32(0.55 * rng.uniform(0.8, 1.15)))
    # Low-frequency exposure gradient across the plate.
    gx = (np.arange(w, dtype=np.float32) / w - 0.5) * np.float32(rng.uniform(-0.05, 0.05))
    gy = (np.arange(h, dtype=np.float32) / h - 0.5) * np.float32(rng.uniform(-0.05, 0.05))
    img += gy[:, None] + gx[None, :]
    if metal:
        img = np.maximum(img, 0.97 * _render(args[0], metal, *args[1:], profile='metal'))
    img = np.clip(img, 0, 1) ** np.float32(rng.uniform(0.8, 1.25))
    full = Image.fromarray(img.astype(np.float32), mode='F').resize((width, height), Image.BILINEAR)
    arr = np.asarray(full, dtype=np.float32) * np.float32(255.0)
    # Film grain: the difference of two uniform bytes (triangular, sd ~104) scaled to sd 1-2.5
    # levels; 5x cheaper than drawing normals and indistinguishable at this amplitude.
    grain = rng.integers(0, 256, (2, height, width), dtype=np.uint8)
    noise = grain[0].astype(np.float32)
    noise -= grain[1]
    noise *= np.float32(rng.uniform(1.0, 2.5) / 104.1)
    arr += noise
    arr += np.float32(0.5)
    return np.clip(arr, 0, 255, out=arr).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def encode_png(gray: np.ndarray, rgb: bool = False) -> bytes:
    """PNG bytes of a uint8 gray image, saved as 3-channel RGB when ``rgb``.

    Gray images are written directly (numpy "Up" filter + zlib level 1): 2-3x faster than
    PIL's adaptive filtering, which tries every filter on every row, at about 5% more bytes.
    """
    if rgb:
        buf = io.BytesIO()
        Image.fromarray(gray, mode='L').convert('RGB').save(buf, format='PNG', compress_level=1)
        return buf.getvalue()
    height, width = gray.shape
    filtered = np.empty((height, width + 1), np.uint8)
    filtered[:, 0] = 2  # filter type "Up": each byte minus the byte above it (mod 256)
    filtered[0, 1:] = gray[0]
    np.subtract(gray[1:], gray[:-1], out=filtered[1:, 1:], dtype=np.uint8)
    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    return (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', header)
            + _chunk(b'IDAT', zlib.compress(filtered.tobytes(), 1)) + _chunk(b'IEND', b''))
