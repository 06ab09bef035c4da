"""Traffic-sign data sets in the published BelgiumTS / GTSRB layouts, from a local path.

Both sets ship class folders of ``.ppm`` crops with a ``GT-*.csv`` per folder,
``;``-separated, header ``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId``:

- BelgiumTS: ``BelgiumTSC_Training/Training/000CC/GT-000CC.csv`` and ``.../Testing/...``
- GTSRB: ``GTSRB/Final_Training/Images/000CC/GT-000CC.csv`` and the test set
  ``GTSRB/Final_Test/Images/GT-final_test.csv`` (one folder; with ClassId in the
  ground-truth release)

:func:`load_sign_dataset` finds every ``GT-*.csv`` under a path, reads the rows and resolves
each ``Filename`` relative to its CSV's folder, so any of these roots (or the procedural set
:func:`~carla_mr.genai.procedural.write_dataset` writes) loads the same way. Nothing is
downloaded.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from carla_mr.errors import InputError

GT_COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")


def write_gt_csv(path: str | os.PathLike, rows: Iterable[Sequence]) -> Path:
    """Write a ``GT-*.csv`` (``;``-separated, the published header) atomically."""
    from carla_mr.io import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf, delimiter=";", lineterminator="\n")
    w.writerow(GT_COLUMNS)
    for r in rows:
        w.writerow(r)
    return atomic_write_text(path, buf.getvalue())


@dataclass
class SignRecord:
    path: Path
    width: int
    height: int
    roi: tuple[int, int, int, int]  # x1, y1, x2, y2 (inclusive pixels)
    class_id: int


@dataclass
class SignDataset:
    """Records of one split; ``images(...)`` loads them as a fixed-size array."""

    records: list[SignRecord]
    root: Path
    class_names: dict[int, str]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.class_id for r in self.records], np.int64)

    def images(self, size: int = 32, *, crop_roi: bool = True, margin: float = 0.12) -> np.ndarray:
        """(N, size, size, 3) uint8 RGB; ``crop_roi`` crops to the ROI (+ ``margin`` of its size)."""
        out = np.empty((len(self.records), size, size, 3), np.uint8)
        for i, r in enumerate(self.records):
            img = read_image(r.path)
            if crop_roi:
                out[i] = _crop_roi(img, r.roi, size, margin)
            else:
                out[i] = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        return out


def crop_roi(img: np.ndarray, roi, size: int, margin: float = 0.12) -> np.ndarray:
    """Crop to the ROI plus ``margin`` of its size and area-resize to (size, size)."""
    x1, y1, x2, y2 = roi
    mx, my = int(round((x2 - x1 + 1) * margin)), int(round((y2 - y1 + 1) * margin))
    h, w = img.shape[:2]
    x1, y1 = max(0, x1 - mx), max(0, y1 - my)
    x2, y2 = min(w - 1, x2 + mx), min(h - 1, y2 + my)
    if x2 > x1 and y2 > y1:
        img = img[y1:y2 + 1, x1:x2 + 1]
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR)



_crop_roi = crop_roi


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; InputError if unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read image {path}", field="image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_gt(csv_path: Path) -> list[SignRecord]:
    text = csv_path.read_text(encoding="utf-8", errors="replace")
    rows = list(csv.reader(io.StringIO(text), delimiter=";"))
    if not rows:
        return []
    header = [h.strip() for h in rows[0]]
    try:
        idx = {c: header.index(c) for c in GT_COLUMNS}
    except ValueError:
        missing = [c for c in GT_COLUMNS if c not in header]
        raise InputError(f"{csv_path} lacks the columns {missing}; expected the GTSRB/BelgiumTS header "
                         f"{';'.join(GT_COLUMNS)}", field="GT csv") from None
    out = []
    for ln, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            out.append(SignRecord(
                path=csv_path.parent / row[idx["Filename"]].strip(),
                width=int(row[idx["Width"]]), height=int(row[idx["Height"]]),
                roi=(int(row[idx["Roi.X1"]]), int(row[idx["Roi.Y1"]]), int(row[idx["Roi.X2"]]), int(row[idx["Roi.Y2"]])),
                class_id=int(row[idx["ClassId"]])))
        except (IndexError, ValueError) as exc:
            raise InputError(f"{csv_path} line {ln}: malformed row {row}: {exc}", field="GT csv") from None
    return out


_SPLIT_DIRS = {
    "train": ("Training", "Final_Training", "train", "Train"),
    "test": ("Testing", "Final_Test", "test", "Test"),
}


def load_sign_dataset(path: str | os.PathLike, split: str | None = None) -> SignDataset:
    """Load a BelgiumTS/GTSRB-layout set (or one split of it) from a local directory.

    ``split``: "train" or "test" picks the matching sub-folder (Training/Final_Training or
    Testing/Final_Test) when ``path`` holds both; None loads every ``GT-*.csv`` under ``path``.
    Class names come from ``classes.txt`` (``id;name`` lines) when present.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(f"data set directory {root} does not exist", field="dataset")
    base = root
    if split is not None:
        if split not in _SPLIT_DIRS:
            raise InputError(f"split must be 'train' or 'test', got {split!r}", field="split")
        found = [d for name in _SPLIT_DIRS[split] for d in root.glob(f"**/{name}") if d.is_dir()]
        if found:
            base = sorted(found, key=lambda d: len(d.parts))[0]
    csvs = sorted(base.rglob("GT-*.csv"))
    if not csvs:
        raise InputError(f"no GT-*.csv files under {base}; expected the GTSRB/BelgiumTS layout "
                         "(class folders of .ppm with GT-<class>.csv)", field="dataset")
    records = [r for c in csvs for r in _read_gt(c)]
    if not records:
        raise InputError(f"the GT-*.csv files under {base} list no images", field="dataset")
    names: dict[int, str] = {}
    for cand in (root / "classes.txt", base / "classes.txt", base.parent / "classes.txt"):
        if cand.is_file():
            for line in cand.read_text().splitlines():
                if ";" in line:
                    i, n = line.split(";", 1)
                    names[int(i)] = n.strip()
            break
    for r in records:
        names.setdefault(r.class_id, f"class_{r.class_id:05d}")
    return SignDataset(records=records, root=base, class_names=names)
