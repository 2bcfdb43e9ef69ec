"""Text descriptions of BraTS-Fuse slices, generated from a slice's label map, sources and geometry.

Rules (each a pure helper the tests check on its own):

- Areas (:func:`region_areas`): pixel count x dy x dx mm^2 of NCR (1), ED (2), ET (3), TC = {1, 3} and
  WT = {1, 2, 3}; labels with no pixel are absent.
- Location (:func:`tumour_location`), from the WT centroid: hemisphere by the side of the brain's midline
  along array axis 0 (midline = centre of the brain's extent, brain = any source > 0; within 2% of the
  brain's width: "midline"); anterior / central / posterior by the thirds of the brain's extent along axis 1;
  inferior / mid-level / superior by the thirds of ``z_position`` (omitted when None). Which way an axis
  points comes from ``axes``, the NIfTI axis codes of the volume (``nibabel.aff2axcodes``): BraTS volumes
  are stored LPS (affine diag(-1, -1, 1)), so a growing axis-0 index is the patient's left and a growing
  axis-1 index is posterior; other codes are honoured, and an axis that is not L/R (resp. A/P) gives no words.
- Relation (:func:`tumour_relation`): an enhancing rim when at least half of the NCR pixels lie inside the
  ET's holes (``binary_fill_holes(ET) & ~ET``); oedema surrounds the core when at least half of the core's
  outer boundary (the 1-pixel, 8-connected ring just outside the hole-filled core) is ED, is adjacent when
  any of it is, else lies apart.
- Conspicuity (:func:`conspicuity`): per present label, the modality whose mean intensity differs most (in
  absolute value) between the label's pixels and the normal-appearing brain (brain pixels outside WT),
  with the sign (brighter / darker); none without normal brain pixels.

Wording varies by a few templates and synonyms picked by ``rng`` (the build seeds it per slice with
:func:`slice_rng`, so a rebuild writes the same texts).
"""

from __future__ import annotations

import csv
import io
import os
import zlib
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from fuse4seg.conventions import LABELS as LABEL_NAMES
from fuse4seg.conventions import MODALITIES
from fuse4seg.conventions import REGIONS as REGION_LABELS
from fuse4seg.data.package.schema import MAX_DESCRIPTION_BYTES
from fuse4seg.errors import ConfigError
from fuse4seg.io import one_line
from fuse4seg.user_files import read_user_file, text_problem

#: How texts word the canonical labels and regions (:mod:`fuse4seg.conventions`), by short name.
WORDS: dict[str, str] = {"ET": "enhancing tumour", "NCR": "necrotic core", "ED": "oedema", "WT": "whole tumour",
                         "TC": "tumour core"}
#: The order texts mention the labels in: innermost first.
MENTION_ORDER: tuple[str, ...] = ("ET", "NCR", "ED")
_LABEL_VALUES = {name: value for value, name in LABEL_NAMES.items()}
#: Canonical labels in the order texts mention them: (value, short name, words).
LABELS: tuple[tuple[int, str, str], ...] = tuple((_LABEL_VALUES[name], name, WORDS[name]) for name in MENTION_ORDER)
#: Regions of more than one label (the ET region is the ET label): (short name, label values, words).
REGIONS: tuple[tuple[str, tuple[int, ...], str], ...] = tuple(
    (name, values, WORDS[name]) for name, values in REGION_LABELS.items() if len(values) > 1)
#: How modality names are written in texts.
MODALITY_WORDS: dict[str, str] = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
NO_TUMOUR = "No tumour visible in this slice."
#: Fraction of the brain's width around its centre called the midline (no hemisphere named).
MIDLINE_FRACTION = 0.02
#: The NIfTI axis codes of BraTS volumes (LPS storage), the default of :func:`tumour_location`.
BRATS_AXES: tuple[str, str, str] = ("L", "P", "S")
_SIDES = {"L": ("right", "left"), "R": ("left", "right")}  # (low index, high index) of axis 0
_AP = {"P": ("anterior", "posterior"), "A": ("posterior", "anterior")}  # (low, high) of axis 1

_INTROS = ("This slice shows", "The slice contains", "Visible in this slice:")
_AREAS = ("Areas:", "Measured areas:", "Region areas:")
_CONSPICUOUS = ("is most conspicuous on", "stands out most on", "shows the strongest contrast on")


def slice_rng(seed: int, case_id: str, slice_index: int) -> np.random.Generator:
    """The wording RNG of one stored slice: a function of the build seed, case id and slice index only."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode("utf-8")), int(slice_index)])


def region_areas(label: np.ndarray, spacing: tuple[float, float]) -> dict[str, float]:
    """{name: area mm^2} of the labels and regions with pixels in a (H, W) canonical ``label`` with pixels of
    ``spacing`` (dy, dx) mm; order: WT, TC, ET, NCR, ED."""
    counts = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=4)
    pixel = float(spacing[0]) * float(spacing[1])
    named = [(name, values) for name, values, _ in REGIONS] + [(name, (value,)) for value, name, _ in LABELS]
    return {name: float(counts[list(values)].sum()) * pixel for name, values in named if counts[list(values)].sum()}


def _third(fraction: float, words: tuple[str, str, str]) -> str:
    """words[0], [1] or [2] for a fraction in [0, 1] below 1/3, up to 2/3, above."""
    return words[0] if fraction < 1 / 3 else words[2] if fraction > 2 / 3 else words[1]


def tumour_location(label: np.ndarray, brain: np.ndarray, z_position: float | None = None,
                    axes: tuple[str, ...] = BRATS_AXES) -> dict[str, str]:
    """{"hemisphere": left/right/midline, "ap": anterior/central/posterior, "si": inferior/mid-level/superior}
    of the WT centroid of a (H, W) ``label`` in the (H, W) bool ``brain`` (see the module doc); keys whose axis
    code or ``z_position`` (0 inferior .. 1 superior of the brain's z-extent) is missing are left out."""
    tumour = np.asarray(label) > 0
    if not tumour.any():
        return {}
    region = np.asarray(brain, dtype=bool) | tumour  # a tumour pixel is brain even if its sources are 0
    centre = ndimage.center_of_mass(tumour)
    out: dict[str, str] = {}
    for axis, key in ((0, "hemisphere"), (1, "ap")):
        present = np.flatnonzero(region.any(axis=1 - axis))
        low, high = float(present[0]), float(present[-1])
        fraction = (centre[axis] - low) / (high - low) if high > low else 0.5
        code = axes[axis] if axis < len(axes) else ""
        if axis == 0 and code in _SIDES:
            side = _SIDES[code]
            out[key] = "midline" if abs(fraction - 0.5) <= MIDLINE_FRACTION / 2 else side[int(fraction > 0.5)]
        elif axis == 1 and code in _AP:
            out[key] = _third(fraction, (_AP[code][0], "central", _AP[code][1]))
    if z_position is not None:
        out["si"] = _third(float(z_position), ("inferior", "mid-level", "superior"))
    return out


def tumour_relation(label: np.ndarray) -> str | None:
    """How the labels of a (H, W) ``label`` relate, in words (rules in the module doc); None without tumour."""
    label = np.asarray(label)
    ncr, ed, et = label == 1, label == 2, label == 3
    if et.any() and ncr.any():
        inside = ndimage.binary_fill_holes(et) & ~et
        core = ("an enhancing rim with a necrotic core" if np.count_nonzero(ncr & inside) * 2 >= np.count_nonzero(ncr)
                else "enhancing tumour next to necrosis")
    elif et.any():
        core = "enhancing tumour"
    elif ncr.any():
        core = "a non-enhancing necrotic core"
    else:
        return "oedema without a tumour core" if ed.any() else None
    if not ed.any():
        return core
    filled = ndimage.binary_fill_holes(ncr | et)
    ring = ndimage.binary_dilation(filled, structure=np.ones((3, 3), bool)) & ~filled
    touching = np.count_nonzero(ring & ed)
    if touching * 2 >= np.count_nonzero(ring):
        return f"oedema surrounding {core}"
    return f"oedema adjacent to {core}" if touching else f"{core} with separate oedema"


def conspicuity(label: np.ndarray, sources: np.ndarray) -> dict[str, tuple[str, float]]:
    """{label short name: (modality, contrast)} for each label present in a (H, W) ``label``: the modality of
    the (4, H, W) ``sources`` (MODALITIES order, [0, 1]) with the largest |mean in label - mean in normal
    brain| and that signed difference; empty without normal-appearing brain (brain pixels outside WT)."""
    label = np.asarray(label)
    sources = np.asarray(sources, dtype=np.float64)
    normal = (sources.max(axis=0) > 0) & (label == 0)
    if not normal.any():
        return {}
    background = sources[:, normal].mean(axis=1)
    out: dict[str, tuple[str, float]] = {}
    for value, name, _ in LABELS:
        mask = label == value
        if mask.any():
            contrast = sources[:, mask].mean(axis=1) - background
            best = int(np.argmax(np.abs(contrast)))
            out[name] = (MODALITIES[best], float(contrast[best]))
    return out


def _location_text(where: dict[str, str]) -> str:
    """' in the left hemisphere (posterior, superior)' from :func:`tumour_location`'s words ('' for none)."""
    side = where.get("hemisphere")
    head = ("at the midline" if side == "midline" else f"in the {side} hemisphere") if side else ""
    rest = ", ".join(where[k] for k in ("ap", "si") if k in where)
    if not head:
        return f" ({rest})" if rest else ""
    return f" {head}" + (f" ({rest})" if rest else "")


def describe_slice(label: np.ndarray, sources: np.ndarray, spacing: tuple[float, float],
                   z_position: float | None, rng: np.random.Generator,
                   axes: tuple[str, ...] = BRATS_AXES) -> str:
    """The text of one slice: canonical ``label`` (H, W) uint8, ``sources`` (4, H, W) float32 in [0, 1]
    (MODALITIES order), pixel ``spacing`` (dy, dx) mm, ``z_position`` in [0, 1] (0 inferior, 1 superior of the
    case's brain) or None, wording from ``rng``, axis codes ``axes`` (module doc)."""
    relation = tumour_relation(label)
    if relation is None:
        return NO_TUMOUR
    brain = np.asarray(sources).max(axis=0) > 0
    where = _location_text(tumour_location(label, brain, z_position, axes))
    intro = _INTROS[rng.integers(len(_INTROS))]
    words = {name: text for _, name, text in LABELS} | {name: text for name, _, text in REGIONS}
    areas = ", ".join(f"{words[name]} {area:.1f} mm²" for name, area in region_areas(label, spacing).items())
    sentences = [f"{intro} {relation}{where}.", f"{_AREAS[rng.integers(len(_AREAS))]} {areas}."]
    for name, (modality, contrast) in conspicuity(label, sources).items():
        verb = _CONSPICUOUS[rng.integers(len(_CONSPICUOUS))]
        tone = "brighter" if contrast > 0 else "darker"
        text = f"{words[name][0].upper()}{words[name][1:]} {verb} {MODALITY_WORDS[modality]}"
        sentences.append(f"{text} ({tone} than the surrounding brain).")
    return " ".join(sentences)


#: The columns of a ``--reports`` CSV file, in this order.
REPORT_COLUMNS = ("case_id", "slice_index", "text")
#: Largest ``--reports`` file read (bytes; checked before reading): 2,600 cases x 155 slices x ~160 bytes.
MAX_REPORTS_BYTES = 64 * 2**20
#: Largest slice index a report may name (int32, what the package stores).
MAX_SLICE_INDEX = 2**31 - 1


def read_reports(path: str | os.PathLike, case_ids: Sequence[str]) -> dict[tuple[str, int | None], str]:
    """{(case_id, slice_index or None for the whole case): text} of a UTF-8 CSV with the header case_id,
    slice_index, text (slice_index empty: every slice of the case); one-line ConfigError (option ``reports``)
    for a missing or unreadable file, non-UTF-8 bytes, a bad header or row, a case not in ``case_ids``, a
    duplicate key, an empty text or one over MAX_DESCRIPTION_BYTES."""
    def fail(message: str) -> ConfigError:
        """The error about this file."""
        return ConfigError(f"{path}: {message}", option="reports")

    data = read_user_file(path, MAX_REPORTS_BYTES, option="reports", what="reports file")
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (byte {exc.start})") from None
    except csv.Error as exc:
        raise fail(f"unreadable ({one_line(exc)})") from None
    if not rows or tuple(c.strip().lstrip("\ufeff") for c in rows[0]) != REPORT_COLUMNS:
        raise fail(f"header must be {','.join(REPORT_COLUMNS)}, got {','.join(rows[0]) if rows else 'nothing'}"[:200])
    known = set(case_ids)
    reports: dict[tuple[str, int | None], str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3:
            raise fail(f"line {line}: expected 3 columns, got {len(row)}")
        case_id, index, text = row[0].strip(), row[1].strip(), row[2]
        if case_id not in known:
            raise fail(f"line {line}: unknown case id {case_id!r}"[:200])
        if index and not (index.isascii() and index.isdigit() and len(index) <= 10 and int(index) <= MAX_SLICE_INDEX):
            raise fail(f"line {line}: slice_index {index[:40]!r} is not a non-negative integer (ASCII digits, at most "
                       f"{MAX_SLICE_INDEX}) or empty")
        key = (case_id, int(index) if index else None)
        if key in reports:
            raise fail(f"line {line}: duplicate report for case {case_id} slice {index or '(whole case)'}")
        size = len(text.encode("utf-8"))
        if not text.strip():
            raise fail(f"line {line}: text is empty")
        problem = text_problem(text)
        if problem:
            raise fail(f"line {line}: text {problem} (only newline and tab are allowed)")
        if size > MAX_DESCRIPTION_BYTES:
            raise fail(f"line {line}: text is {size} bytes, over the limit of {MAX_DESCRIPTION_BYTES}")
        reports[key] = text
    return reports


def apply_reports(reports: dict[tuple[str, int | None], str], case_id: str, slice_index: Sequence[int],
                  texts: list[str | None]) -> list[str | None]:
    """``texts`` of one case's slices with each replaced by its slice's report, else the whole case's, if any."""
    whole = reports.get((case_id, None))
    return [reports.get((case_id, int(z)), whole if whole is not None else text) for z, text in zip(slice_index, texts)]
