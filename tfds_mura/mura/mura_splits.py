"""Patient-level splits of MURA-v1.1 for the `mura` builder.

* ``train`` / ``validation``: the official train set, split about 80/20 by patient. A
  patient goes to ``validation`` when a salted SHA-256 of its bare id (``patient00011``)
  falls in the lowest 20% of the hash range (tiny inputs keep at least one patient on each
  side). The bare id is used across body parts, so a
  folder name that recurs under two parts lands in one split.
* ``test``: the official valid set (patient-disjoint from the official train set).
* ``train_10pct`` / ``train_1pct``: label fractions of ``train``, chosen patient by patient
  in a salted-hash order. A patient is taken when adding its images brings the per
  (body part, label) image counts closer (in L1 distance) to 10% / 1% of the ``train``
  counts. ``train_1pct`` is chosen the same way from the patients of ``train_10pct``, so
  1pct is inside 10pct, which is inside train. Each fraction gets at least one patient
  with a normal and one with an abnormal image when ``train`` has both.

Everything is a pure function of the CSV contents: no RNG state, no Python ``hash()``.
"""
import collections
import hashlib
from typing import Dict, Iterable, List, Sequence, Set, Tuple

VALIDATION_FRACTION = 0.2
LABEL_FRACTIONS = (('train_10pct', 0.10), ('train_1pct', 0.01))
_VALIDATION_SALT = 'mura-v1.1/validation/v1'
_FRACTION_SALT = 'mura-v1.1/label-fraction/v1'


def stable_unit(text: str, salt: str) -> float:
    """A deterministic number in [0, 1) from SHA-256(salt + ':' + text)."""
    digest = hashlib.sha256(f'{salt}:{text}'.encode('utf-8')).digest()
    return int.from_bytes(digest[:8], 'big') / 2.0 ** 64


def validation_patients(patient_ids: Iterable[str]) -> Set[str]:
    """The official-train patients that form the ``validation`` split.

    A patient is in validation when its salted hash is below ``VALIDATION_FRACTION``.
    Only for tiny inputs, where no (or every) patient would qualify, the patient with the
    lowest (highest) hash is moved, so that both splits hold at least one patient.
    """
    ranked = sorted(set(patient_ids), key=lambda p: (stable_unit(p, _VALIDATION_SALT), p))
    chosen = {p for p in ranked if stable_unit(p, _VALIDATION_SALT) < VALIDATION_FRACTION}
    if len(ranked) >= 2 and not chosen:
        chosen = {ranked[0]}
    elif len(ranked) >= 2 and len(chosen) == len(ranked):
        chosen.discard(ranked[-1])
    return chosen


def _strata_by_patient(records: Iterable) -> Dict[str, collections.Counter]:
    per_patient: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        per_patient[r.patient_id][(r.part, r.label)] += 1
    return per_patient


def select_patients(records: Sequence, fraction: float, candidates: Iterable[str],
                    salt: str = _FRACTION_SALT) -> Set[str]:
    """Patients (among ``candidates``) whose images make up ``fraction`` of ``records``.

    Strata are (body part, label); targets are ``fraction`` x the stratum's image count
    in ``records``. Candidates are visited in salted-hash order and kept when they reduce
    the L1 distance between the selected counts and the targets.
    """
    per_patient = _strata_by_patient(records)
    totals = collections.Counter()
    for counts in per_patient.values():
        totals.update(counts)
    target = {s: fraction * n for s, n in totals.items()}
    order = sorted(set(candidates), key=lambda p: (stable_unit(p, salt), p))
    current: collections.Counter = collections.Counter()
    chosen: List[str] = []
    for patient in order:
        counts = per_patient.get(patient)
        if not counts:
            continue
        gain = sum(abs(current[s] - target[s]) - abs(current[s] + n - target[s]) for s, n in counts.items())
        if gain > 1e-9:
            chosen.append(patient)
            current.update(counts)
    # Tiny inputs: make sure both classes are represented, so a classifier can be trained.
    for label in sorted({label for _, label in totals}):
        if not any(label == s[1] for p in chosen for s in per_patient[p]):
            first = next((p for p in order if any(label == s[1] for s in per_patient.get(p, ()))), None)
            if first is not None:
                chosen.append(first)
    return set(chosen)


def make_splits(records: Sequence) -> Dict[str, list]:
    """Split name -> records, for records of one config (both official splits).

    Returns the keys ``train``, ``validation``, ``test``, ``train_10pct``, ``train_1pct``.
    """
    official_train = [r for r in records if r.official_split == 'train']
    test = [r for r in records if r.official_split == 'valid']
    held_out = validation_patients(r.patient_id for r in official_train)
    train = [r for r in official_train if r.patient_id not in held_out]
    validation = [r for r in official_train if r.patient_id in held_out]
    splits = {'train': train, 'validation': validation, 'test': test}
    pool = {r.patient_id for r in train}
    for name, fraction in LABEL_FRACTIONS:
        pool = select_patients(train, fraction, pool)
        splits[name] = [r for r in train if r.patient_id in pool]
    return splits


def fraction_tolerance(target_images: float) -> float:
    """Allowed |images - target| for a label-fraction split (see the dataset card).

    5% of the target plus 10 images: the greedy choice ends within about half a
    patient's images of each (part, label) target, and tiny inputs add up to two
    patients to cover both labels.
    """
    return 0.05 * target_images + 10


def split_summary(splits: Dict[str, list]) -> List[Tuple[str, int, int, int]]:
    """(split, images, abnormal images, patients) per split."""
    return [(name, len(rs), sum(r.label for r in rs), len({r.patient_id for r in rs}))
            for name, rs in splits.items()]
