"""Reading a manually downloaded MURA-v1.1 (folder or zip) and its four CSVs.

Every image the dataset holds is named by a CSV row; nothing is globbed, so macOS
``._imageN.png`` sidecars, ``.DS_Store`` files and ``__MACOSX/`` folders are never read.
All problems are raised as one ``MuraDataError`` that says what is wrong and what to do.
"""
import concurrent.futures
import dataclasses
import os
import re
import zipfile
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from etils import epath

ROOT_NAME = 'MURA-v1.1'
ZIP_NAME = 'MURA-v1.1.zip'
PARTS = ('elbow', 'finger', 'forearm', 'hand', 'humerus', 'shoulder', 'wrist')
OFFICIAL_SPLITS = ('train', 'valid')
_MAX_LISTED = 10
# Threads that check, convert and write images: reads, zlib and PIL release the GIL.
BUILD_THREADS = min(8, os.cpu_count() or 1)
_PREPARE_BATCH = 64

_PARTS_RE = '|'.join(p.upper() for p in PARTS)
_STUDY_PATTERN = rf'^{re.escape(ROOT_NAME)}/(train|valid)/XR_({_PARTS_RE})/(patient\d+)/(study\d+)_(positive|negative)/'
_IMAGE_RE = re.compile(_STUDY_PATTERN + r'image(\d+)\.png$')
_STUDY_RE = re.compile(_STUDY_PATTERN + '$')


class MuraDataError(ValueError):
    """The manual MURA input is missing, malformed or holds unreadable images."""


@dataclasses.dataclass(frozen=True)
class MuraRecord:
    """One image row of the CSVs, joined with its study label."""
    key: str          # path relative to MURA-v1.1, e.g. train/XR_ELBOW/patient00011/study1_negative/image1.png
    official_split: str  # 'train' or 'valid'
    part: str         # lower-case body part, e.g. 'elbow'
    patient_id: str   # bare folder name, e.g. 'patient00011' (may recur under several parts)
    study_id: str     # e.g. XR_ELBOW/patient00011/study1_negative
    view_index: int   # M - 1 for imageM.png
    label: int        # 0 normal, 1 abnormal


def list_problems(title: str, items: Sequence[str], hint: str) -> str:
    """'<title> N: a; b; ... (and K more). <hint>', naming at most 10 items."""
    shown = '; '.join(items[:_MAX_LISTED])
    more = f' (and {len(items) - _MAX_LISTED} more)' if len(items) > _MAX_LISTED else ''
    return f'{title} {len(items)}: {shown}{more}. {hint}'


def _escapes(path: str) -> bool:
    """True for absolute paths and paths with a '..' part (which could leave their folder)."""
    if path.startswith(('/', '\\')) or re.match(r'^[A-Za-z]:', path):
        return True
    return '..' in path.replace('\\', '/').split('/')


class MuraSource:
    """Read access to the files under MURA-v1.1/, from a folder or from the zip."""

    def __init__(self, description: str):
        self.description = description

    def read_bytes(self, relpath: str) -> bytes:
        """Bytes of a file given relative to MURA-v1.1/."""
        raise NotImplementedError

    def exists(self, relpath: str) -> bool:
        """Whether a file given relative to MURA-v1.1/ exists."""
        raise NotImplementedError

    def read_prefix(self, relpath: str, size: int) -> bytes:
        """The first `size` bytes of a file (fewer if it is shorter)."""
        return self.read_bytes(relpath)[:size]

    def size(self, relpath: str) -> int:
        """The file's size in bytes."""
        return len(self.read_bytes(relpath))

    def close(self) -> None:
        """Releases open handles."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FolderSource(MuraSource):
    """An unzipped MURA-v1.1/ folder."""

    def __init__(self, root: epath.Path):
        super().__init__(f'folder {root}')
        self.root = root
        # Local folders skip epath's per-call URI parsing (about 7% of a build); remote
        # ones (gs://...) go through epath.
        self._local = None if '://' in os.fspath(root) else os.fspath(root)

    def read_bytes(self, relpath: str) -> bytes:
        if self._local is not None:
            with open(os.path.join(self._local, relpath), 'rb') as f:
                return f.read()
        return (self.root / relpath).read_bytes()

    def exists(self, relpath: str) -> bool:
        if self._local is not None:
            return os.path.isfile(os.path.join(self._local, relpath))
        return (self.root / relpath).is_file()

    def read_prefix(self, relpath: str, size: int) -> bytes:
        with (open(os.path.join(self._local, relpath), 'rb') if self._local is not None
              else (self.root / relpath).open('rb')) as f:
            return f.read(size)

    def size(self, relpath: str) -> int:
        if self._local is not None:
            return os.path.getsize(os.path.join(self._local, relpath))
        return (self.root / relpath).stat().length


class ZipSource(MuraSource):
    """MURA-v1.1.zip read in place (never extracted)."""

    def __init__(self, path: epath.Path):
        super().__init__(f'zip {path}')
        self._file = path.open('rb')
        try:
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            self._file.close()
            raise MuraDataError(f'{path} is not a readable zip file ({e}); it is probably an incomplete '
                                f'download: download {ZIP_NAME} again or unzip it into the manual dir.') from e
        names = self._zip.namelist()
        bad = [n for n in names if _escapes(n)]
        if bad:
            self.close()
            raise MuraDataError(list_problems(
                f'{path} holds entries that escape its folder (absolute or ../ paths), refusing to read it:',
                bad, f'Use the original {ZIP_NAME}.'))
        self._names = {n for n in names if not n.endswith('/')}
        if f'{ROOT_NAME}/train_image_paths.csv' not in self._names:
            self.close()
            raise MuraDataError(f'{path} has no {ROOT_NAME}/train_image_paths.csv; expected the original '
                                f'{ZIP_NAME} whose top-level folder is {ROOT_NAME}/.')

    def read_bytes(self, relpath: str) -> bytes:
        try:
            return self._zip.read(f'{ROOT_NAME}/{relpath}')
        except KeyError as e:
            raise FileNotFoundError(relpath) from e

    def exists(self, relpath: str) -> bool:
        return f'{ROOT_NAME}/{relpath}' in self._names

    def read_prefix(self, relpath: str, size: int) -> bytes:
        with self._zip.open(f'{ROOT_NAME}/{relpath}') as f:
            return f.read(size)

    def size(self, relpath: str) -> int:
        return self._zip.getinfo(f'{ROOT_NAME}/{relpath}').file_size

    def close(self) -> None:
        if getattr(self, '_zip', None) is not None:
            self._zip.close()
        self._file.close()


def open_source(manual_dir: epath.PathLike, instructions: str) -> MuraSource:
    """Finds MURA-v1.1/ (or MURA-v1.1.zip) in the manual dir.

    Accepted layouts: ``manual_dir/MURA-v1.1/``, ``manual_dir/MURA-v1.1.zip``, or
    ``manual_dir`` being the MURA-v1.1 folder itself. The folder wins over the zip.
    """
    manual_dir = epath.Path(manual_dir)
    if not manual_dir.is_dir():
        raise MuraDataError(f'Manual dir {manual_dir} does not exist. {instructions}')
    for candidate in (manual_dir / ROOT_NAME, manual_dir):
        if (candidate / 'train_image_paths.csv').is_file():
            return FolderSource(candidate)
    if (manual_dir / ZIP_NAME).is_file():
        return ZipSource(manual_dir / ZIP_NAME)
    found = sorted(p.name for p in manual_dir.iterdir())
    listing = ', '.join(found[:10]) + (' ...' if len(found) > 10 else '') if found else 'nothing'
    raise MuraDataError(f'No {ROOT_NAME}/ folder or {ZIP_NAME} in manual dir {manual_dir} (found: {listing}). '
                        f'{instructions}')


def _csv_lines(source: MuraSource, name: str) -> List[Tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a CSV."""
    try:
        raw = source.read_bytes(name)
    except FileNotFoundError:
        raise MuraDataError(f'{name} is missing from {source.description}; the four MURA CSVs '
                            f'(train/valid _image_paths.csv and _labeled_studies.csv) are required.') from None
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        raise MuraDataError(f'{name} in {source.description} is not a UTF-8 text file ({e}).') from e
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise MuraDataError(f'{name} in {source.description} is empty.')
    return lines


def _outside(path: str, lineno: int) -> Optional[str]:
    """Why ``path`` is not inside MURA-v1.1/ (None when it is)."""
    if _escapes(path):
        return f'path escapes {ROOT_NAME}/ (absolute or ../)'
    if not path.startswith(f'{ROOT_NAME}/'):
        if lineno == 1:
            return f'not a {ROOT_NAME}/ path (a header row? MURA CSVs have none)'
        return f'path is outside {ROOT_NAME}/'
    return None


def _format_error(name: str, bad: List[Tuple[int, str, str]], expected: str) -> MuraDataError:
    lineno, line, why = bad[0]
    return MuraDataError(f'{name} is not in MURA format: line {lineno} {line!r}: {why}; {len(bad)} bad line(s) '
                         f'in total. Expected {expected}.')


def _parse_studies(source: MuraSource, split: str) -> Dict[str, int]:
    name = f'{split}_labeled_studies.csv'
    labels, bad = {}, []
    for lineno, line in _csv_lines(source, name):
        cols = [c.strip() for c in line.split(',')]
        if len(cols) != 2:
            bad.append((lineno, line, f'{len(cols)} column(s), expected 2'))
        elif why := _outside(cols[0], lineno):
            bad.append((lineno, line, why))
        elif cols[1] not in ('0', '1'):
            bad.append((lineno, line, f'label {cols[1]!r} is not 0 or 1'))
        elif not (m := _STUDY_RE.match(cols[0])) or m.group(1) != split:
            bad.append((lineno, line, f'not a {split} study path'))
        elif (m.group(5) == 'positive') != (cols[1] == '1'):
            bad.append((lineno, line, f'label {cols[1]} contradicts the folder suffix {m.group(5)!r}'))
        elif cols[0] in labels:
            bad.append((lineno, line, 'duplicate study'))
        else:
            labels[cols[0]] = int(cols[1])
    if bad:
        expected = f'"{ROOT_NAME}/{split}/XR_<PART>/patientNNNNN/studyK_<positive|negative>/,<0|1>" per line, no header'
        raise _format_error(name, bad, expected)
    return labels


def _parse_images(source: MuraSource, split: str, labels: Dict[str, int]) -> List[MuraRecord]:
    name = f'{split}_image_paths.csv'
    records, bad, seen, used = [], [], set(), set()
    for lineno, line in _csv_lines(source, name):
        path = line.strip()
        if ',' in path:
            bad.append((lineno, line, f'{path.count(",") + 1} columns, expected 1'))
        elif why := _outside(path, lineno):
            bad.append((lineno, line, why))
        elif not (m := _IMAGE_RE.match(path)) or m.group(1) != split:
            bad.append((lineno, line, f'not a {split} image path'))
        elif path in seen:
            bad.append((lineno, line, 'duplicate image'))
        elif (study := path[:path.rfind('/') + 1]) not in labels:
            bad.append((lineno, line, f'its study is not listed in {split}_labeled_studies.csv'))
        else:
            seen.add(path)
            used.add(study)
            _, part, patient, study_no, suffix, view = m.groups()
            records.append(MuraRecord(
                key=path[len(ROOT_NAME) + 1:], official_split=split, part=part.lower(), patient_id=patient,
                study_id=f'XR_{part}/{patient}/{study_no}_{suffix}', view_index=int(view) - 1,
                label=labels[study]))
    if bad:
        raise _format_error(name, bad, f'one "{ROOT_NAME}/{split}/XR_<PART>/patientNNNNN/studyK_<label>/imageM.png" '
                                       'per line, no header')
    empty = sorted(set(labels) - used)
    if empty:
        raise MuraDataError(list_problems(f'{split}_labeled_studies.csv lists studies with no image in {name}:',
                                          empty, 'The CSVs do not belong together; use the original MURA-v1.1 files.'))
    return records


def read_records(source: MuraSource) -> List[MuraRecord]:
    """All image records of both official splits, validated against MURA's CSV format."""
    records = []
    for split in OFFICIAL_SPLITS:
        records += _parse_images(source, split, _parse_studies(source, split))
    return records


def undecodable_images_error(source: MuraSource, problems: Sequence[str]) -> MuraDataError:
    """The one error for images that are truncated, damaged or not images ('<key> (<why>)' each)."""
    return MuraDataError(list_problems(
        f'Undecodable images (truncated, damaged or not images) in {source.description}:', list(problems),
        'Re-download MURA-v1.1 or replace these files.'))


def prepare_images(source: MuraSource, records: Iterable[MuraRecord],
                   prepare: Callable[[bytes], Tuple[bytes, bool]],
                   is_gray8_header: Optional[Callable[[bytes], bool]] = None, header_bytes: int = 0,
                   threads: int = BUILD_THREADS) -> Tuple[Dict[str, bytes], Dict[str, int], set]:
    """Checks every image once and converts those that need it, on `threads` threads.

    Threads suffice: reading, the CRC walk (zlib) and PIL's decode/encode release the GIL for
    the bulk of their work.

    With `is_gray8_header` (function(the first `header_bytes` bytes) -> whether they start an
    8-bit gray PNG), images whose header says so are only sized here and returned as
    "deferred": they are stored byte for byte, and the caller checks them when it reads them
    anyway (one read per image instead of two). If any other image is broken, every image is
    checked at once so that the error lists all of them.

    Raises one MuraDataError naming missing files, or else undecodable ones (up to 10 named,
    with the total count).

    Args:
      prepare: function(bytes) -> (bytes to store, whether they were converted); raises
        ValueError for an undecodable image.
    Returns:
      (key -> converted bytes, only for converted images; key -> size in bytes of what is stored;
      the deferred keys).
    """
    records = list(records)
    missing = [r.key for r in records if not source.exists(r.key)]
    if missing:
        raise MuraDataError(list_problems(
            f'Images listed in the CSVs but missing from {source.description}:', missing,
            'Re-download or re-extract MURA-v1.1 (the CSVs and the images must come from the same copy).'))

    def one(key: str):
        """(stored size, converted bytes or None, problem or None, deferred); keeps no unconverted bytes."""
        try:
            if is_gray8_header is not None and is_gray8_header(source.read_prefix(key, header_bytes)):
                return source.size(key), None, None, True
            stored, was_converted = prepare(source.read_bytes(key))
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            return 0, None, f'{key} ({e})', False
        return len(stored), stored if was_converted else None, None, False

    def batch(keys: List[str]) -> list:
        return [one(key) for key in keys]

    keys = [r.key for r in records]
    # Batches, not one task per image: a thread-pool task costs tens of µs, as much as a check.
    batches = [keys[i:i + _PREPARE_BATCH] for i in range(0, len(keys), _PREPARE_BATCH)]
    broken, converted, sizes, deferred = [], {}, {}, set()
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        results = (result for batch_results in pool.map(batch, batches) for result in batch_results)
        for key, (size, stored, problem, is_deferred) in zip(keys, results):
            if problem:
                broken.append(problem)
                continue
            sizes[key] = size
            if stored is not None:
                converted[key] = stored
            if is_deferred:
                deferred.add(key)
    if broken and is_gray8_header is not None:
        return prepare_images(source, records, prepare, threads=threads)  # raises, naming every broken image
    if broken:
        raise undecodable_images_error(source, broken)
    return converted, sizes, deferred
