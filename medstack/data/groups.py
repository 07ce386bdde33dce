"""Group (usually patient) ids of images: BreakHis file names, a regex, or a CSV.

An image without a group id is an error naming the file, never its own group, since a silently ungrouped image
is exactly the leak grouping exists to prevent.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from medstack.data.dataset import DataError

if TYPE_CHECKING:
    from medstack.config import GroupBy

log = logging.getLogger(__name__)

# BreakHis: SOB_<B|M>_<tumour type>-<patient/slide id>-<magnification>-<sequence>.png, e.g.
# SOB_B_A-14-22549AB-40-001.png is patient 14-22549AB. The id is everything between type and magnification.
BREAKHIS_NAME = "SOB_<B|M>_<type>-<patient>-<mag>-<seq>.png"
BREAKHIS_PATTERN = re.compile(
    r"SOB_(?P<tumour_class>[BM])_(?P<tumour_type>[A-Z]+)-(?P<group>\d+-[0-9A-Za-z]+)-(?P<magnification>\d+)"
    r"-(?P<seq>\d+)\.[A-Za-z]+"
)


def assign_groups(spec: GroupBy, files: Sequence[Path], root: str | Path) -> tuple[tuple[str, ...], str]:
    """Group id of every file (in order) under a folder ``data.group_by`` spec, and a one-line description of the
    rule for the report. A file without a group id is a :class:`DataError` naming it and the rule."""
    root = Path(root)
    if spec.kind == "breakhis":
        rule = f"the BreakHis pattern {BREAKHIS_NAME} (data.group_by: breakhis)"
        ids = group_ids_from_names(files, BREAKHIS_PATTERN, rule, fullmatch=True)
        return ids, f"BreakHis file names {BREAKHIS_NAME} (patient id)"
    if spec.kind == "filename_regex":
        where = "file name" if spec.match == "name" else f"path relative to {root}"
        rule = f"the regex {spec.pattern!r} (data.group_by: filename_regex, searched in the {where})"
        ids = group_ids_from_names(files, re.compile(spec.pattern), rule, root=root if spec.match != "name" else None)
        return ids, f"regex {spec.pattern} on the {where}"
    if spec.kind == "csv":
        mapping = read_group_csv(spec.path, spec.file_column, spec.group_column)
        ids = group_ids_from_csv(files, root, mapping, f"group_by csv {spec.path} (column {spec.file_column!r})")
        return ids, f"csv {spec.path} ({spec.file_column} -> {spec.group_column})"
    raise DataError(f"data.group_by kind {spec.kind!r} cannot group an image folder (use breakhis, "
                    "filename_regex or csv)")


def check_breakhis_classes(files_by_class: dict[str, Sequence[Path]]) -> None:
    """A BreakHis name states its class (``SOB_B_`` benign, ``SOB_M_`` malignant): when the class folders are named
    ``benign`` and ``malignant``, every file must sit in the folder its name states, or its label would be wrong
    without a word. With other class folders (e.g. the eight tumour types) there is nothing to compare."""
    folder_of = {name.lower(): name for name in files_by_class}
    if not {"benign", "malignant"} <= folder_of.keys():
        return
    stated = {"B": "benign", "M": "malignant"}
    wrong = []
    for folder in ("benign", "malignant"):
        for file in files_by_class[folder_of[folder]]:
            found = BREAKHIS_PATTERN.fullmatch(Path(file).name)
            if found and stated[found["tumour_class"]] != folder:
                wrong.append((Path(file), stated[found["tumour_class"]], folder_of[folder]))
    if wrong:
        file, says, folder = wrong[0]
        more = (f"; {len(wrong)} files disagree with their class folder, e.g. {[f.name for f, _, _ in wrong[:3]]}"
                if len(wrong) > 1 else "")
        raise DataError(f"{file}: its BreakHis name says {says} but it is in the class folder {folder!r}{more}. "
                        "Move it to the folder its name states, or fix the name")


def group_ids_from_names(files: Sequence[str | Path], pattern: re.Pattern[str], rule: str, *,
                         root: Path | None = None, fullmatch: bool = False) -> tuple[str, ...]:
    """The capture ``group`` (or the only capture group) of ``pattern`` in each file name, or in its path relative
    to ``root`` when given. Every file must match with a non-empty id; the error names the first few that do not."""
    which = "group" if "group" in pattern.groupindex else 1
    ids, unmatched = [], []
    for file in files:
        path = Path(file)
        text = path.relative_to(root).as_posix() if root is not None else path.name
        found = pattern.fullmatch(text) if fullmatch else pattern.search(text)
        group_id = found.group(which) if found else None
        if not group_id:
            unmatched.append(path)
        ids.append(group_id)
    if unmatched:
        first = unmatched[0]
        text = first.relative_to(root).as_posix() if root is not None else first.name
        more = (f"; {len(unmatched)} of {len(ids)} images have no group id, e.g. {[p.name for p in unmatched[:3]]}"
                if len(unmatched) > 1 else "")
        raise DataError(f"{first}: no group id: {text!r} does not match {rule}{more}. Every image needs one: an "
                        "image left in a group of its own could leak its patient across splits")
    return tuple(ids)


def read_group_csv(path: str | Path, file_column: str, group_column: str) -> dict[str, str]:
    """``{file: group id}`` from a CSV with a header row; ``\\`` in file paths read as ``/``, ``./`` dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"group_by csv not found: {path}")
    mapping: dict[str, str] = {}
    line_of: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = [c for c in (file_column, group_column) if c not in columns]
            if missing:
                raise DataError(f"{path}: no column(s) {missing} (data.group_by file_column {file_column!r}, "
                                f"group_column {group_column!r}); the CSV has columns {columns}")
            for row in reader:
                file = (row.get(file_column) or "").strip().replace("\\", "/").removeprefix("./")
                group_id = (row.get(group_column) or "").strip()
                if not file and not group_id:
                    continue  # blank line
                if not file:
                    raise DataError(f"{path}: line {reader.line_num}: empty {file_column!r} (group {group_id!r})")
                if not group_id:
                    raise DataError(f"{path}: line {reader.line_num}: empty {group_column!r} for file {file!r}")
                if mapping.get(file, group_id) != group_id:
                    raise DataError(f"{path}: file {file!r} is listed with two groups: {mapping[file]!r} "
                                    f"(line {line_of[file]}) and {group_id!r} (line {reader.line_num})")
                mapping[file] = group_id
                line_of.setdefault(file, reader.line_num)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as CSV: {exc}") from exc
    if not mapping:
        raise DataError(f"{path}: no rows (expected columns {file_column!r} and {group_column!r})")
    return mapping


def group_ids_from_csv(files: Sequence[str | Path], root: str | Path, mapping: dict[str, str],
                       what: str) -> tuple[str, ...]:
    """Group id of each file: looked up by its path relative to ``root``, else by its bare file name (which must
    then name one image only). A file found neither way is an error naming it and ``what`` (the CSV)."""
    root = Path(root)
    paths = [Path(f) for f in files]
    relative = [p.relative_to(root).as_posix() for p in paths]
    images_named: dict[str, list[str]] = {}
    for p, rel in zip(paths, relative):
        images_named.setdefault(p.name, []).append(rel)
    ids, missing = [], []
    for p, rel in zip(paths, relative):
        group_id = mapping.get(rel)
        if group_id is None and p.name in mapping:
            if len(images_named[p.name]) > 1:
                raise DataError(f"{what}: file name {p.name!r} matches {len(images_named[p.name])} images "
                                f"{images_named[p.name][:3]}; list paths relative to {root} instead")
            group_id = mapping[p.name]
        if group_id is None:
            missing.append(rel)
        ids.append(group_id)
    if missing:
        more = f"; {len(missing)} of {len(ids)} images are not listed, e.g. {missing[:3]}" if len(missing) > 1 else ""
        raise DataError(f"{root / missing[0]}: not listed in {what}, by its path {missing[0]!r} relative to {root} "
                        f"or by its file name{more}. Every image needs a group id")
    used = set(relative) | {p.name for p in paths}
    unused = [f for f in mapping if f not in used]
    if unused:
        log.info("%s: %d row(s) match no image (e.g. %s); ignored", what, len(unused), unused[:3])
    return tuple(ids)


def log_mixed_groups(where: str | Path, groups: Sequence[str], labels: np.ndarray,
                      class_names: Sequence[str]) -> None:
    """A group with images in several classes is allowed (e.g. two tumour types of one patient), but said."""
    seen: dict[str, set[int]] = {}
    for group_id, label in zip(groups, labels.tolist()):
        seen.setdefault(group_id, set()).add(label)
    mixed = {g: sorted(class_names[c] for c in cs) for g, cs in seen.items() if len(cs) > 1}
    if mixed:
        log.warning("%s: %d group(s) have images in more than one class, e.g. %s", where, len(mixed),
                    dict(list(mixed.items())[:3]))
