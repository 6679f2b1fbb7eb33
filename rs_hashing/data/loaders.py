"""Readers for the caption layouts of the field, with validation before any work.

* Karpathy JSON (RSICD, UCM-captions, Sydney-captions, RSITMD, NWPU-Captions):
  `{"images": [{"filename", "sentences": [{"raw", ...}], "split", ...}]}` with the images
  in a folder beside it.
* Plain CSV for users' own archives: an image folder plus rows `image,caption[,label]`;
  several rows of one image give it several captions.

Scene classes come from a label field of the caption file when it has one (UCM's
`classname`/`classcode`), else from file names of the form `<class>_<n>.<ext>` (RSICD);
a user label file (`filename,label` CSV or a JSON object) overrides both.

Every problem is reported as a `DatasetError` that names the file and the item: missing
images (count and first few names), empty or non-UTF-8 captions, duplicate file names,
unreadable JSON or CSV, items without a class.

Image names are relative paths inside the image folder (subfolders are fine). A caption
file is input from whoever made the archive, so a name that is absolute, has a `..`
component (`/` or `\\` separated) or a NUL byte is refused, and so is a name that
resolves, through a symbolic link, to a path outside the image folder: images may be
links, but only to files inside the folder (link the folder itself to keep images
elsewhere; the folder is resolved first).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Iterable, Sequence

import numpy as np

from rs_hashing.data.caption_dataset import CaptionDataset
from rs_hashing.errors import DatasetError

# Usual image folder names of the public releases, tried in this order.
IMAGE_DIR_NAMES = ("RSICD_images", "images", "imgs", "Images", "image", "img")
LABEL_FIELDS = ("classname", "class_name", "class", "label", "category", "classcode")
_NUMBERED_NAME = re.compile(r"^(?P<cls>.+?)[_\-]?\d+$")
_MAX_LISTED = 5


def _read_text(path: str, what: str) -> str:
    """Reads a UTF-8 text file; a bad byte is reported with its line and offset."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read {what} ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}: {what} is not valid UTF-8 (byte {e.start}, line {line}: "
            f"{raw[e.start:e.start + 8]!r})") from None


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def class_from_filename(filename: str) -> str | None:
    """`airport_12.jpg` -> `airport`; None when the name carries no class."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    match = _NUMBERED_NAME.match(stem)
    return match.group("cls") if match and not match.group("cls").isdigit() else None


def load_label_file(path: str) -> dict[str, str]:
    """Reads `filename,label` rows (CSV, header optional) or a JSON object."""
    text = _read_text(path, "label file")
    if path.lower().endswith(".json"):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: label file is not valid JSON ({e})") from None
        if not isinstance(values, dict):
            raise DatasetError(f"{path}: label JSON must be an object {{filename: label}}")
        return {str(k): str(v) for k, v in values.items()}
    labels = {}
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (line_no == 1 and [c.strip().lower() for c in row[:2]] == ["filename", "label"]):
            continue
        if len(row) < 2 or not row[1].strip():
            raise DatasetError(f"{path}, line {line_no}: expected 'filename,label', got {row!r}")
        labels[row[0].strip()] = row[1].strip()
    return labels


def find_image_dir(data_dir: str) -> str:
    for name in IMAGE_DIR_NAMES:
        candidate = os.path.join(data_dir, name)
        if os.path.isdir(candidate):
            return candidate
    raise DatasetError(
        f"{data_dir}: no image folder found (looked for {', '.join(IMAGE_DIR_NAMES)}); "
        "pass image_dir")


def _check_captions(source: str, filename: str, captions: Sequence[str]) -> tuple[str, ...]:
    if not captions:
        raise DatasetError(f"{source}: image {filename!r} has no caption")
    cleaned = []
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise DatasetError(f"{source}: image {filename!r}, caption {i}: empty caption")
        cleaned.append(" ".join(caption.split()))
    return tuple(cleaned)


def _check_images(source: str, image_dir: str, filenames: Sequence[str]) -> None:
    if not os.path.isdir(image_dir):
        raise DatasetError(f"{source}: image folder {image_dir} does not exist")
    present = set(os.listdir(image_dir))
    missing = [f for f in filenames if f not in present and not os.path.isfile(os.path.join(image_dir, f))]
    if missing:
        raise DatasetError(
            f"{source}: {len(missing)} of {len(filenames)} images are missing from {image_dir}: "
            f"{_listing(missing)}")


def _outside_reason(root: str, filename: str) -> str | None:
    """Why `filename` does not name a path inside the resolved folder `root`, or None."""
    if "\0" in filename:
        return "it holds a NUL byte"
    if os.path.isabs(filename) or filename.startswith("\\"):
        return "it is an absolute path"
    if ".." in re.split(r"[/\\]", filename):
        return "it has a '..' component"
    # One lstat per component; only a name with a link in it is resolved whole
    # (realpath would also re-walk the folder's own path for every image).
    current = root
    for part in filename.split("/"):
        current = os.path.join(current, part)
        if os.path.islink(current):
            resolved = os.path.realpath(os.path.join(root, filename))
            if os.path.commonpath([root, resolved]) != root:
                return f"it resolves through a symbolic link to {resolved}"
            break
    return None


def _check_inside(source: str, image_dir: str, filenames: Sequence[str],
                  places: Sequence[str]) -> None:
    """Refuses the first image name that leaves the image folder; `places` say where
    each name stands in the caption file (': images[3]', ', line 5')."""
    root = os.path.realpath(image_dir)
    for filename, place in zip(filenames, places):
        reason = _outside_reason(root, filename)
        if reason is not None:
            raise DatasetError(
                f"{source}{place}: image {filename!r} leaves the image folder {image_dir} "
                f"({reason}); image names must be relative paths inside it")


def _build(name: str, source: str, image_dir: str, filenames: list[str],
           captions: list[tuple[str, ...]], field_labels: list[str | None],
           label_file: str | None, check_images: bool, places: list[str]) -> CaptionDataset:
    # Before anything else looks at a name: checking for a file named '../x' already
    # probes outside the folder.
    _check_inside(source, image_dir, filenames, places)
    seen: dict[str, int] = {}
    duplicates = []
    for i, f in enumerate(filenames):
        if f in seen:
            duplicates.append(f"{f} (items {seen[f]} and {i})")
        seen.setdefault(f, i)
    if duplicates:
        raise DatasetError(f"{source}: duplicate file names: {_listing(duplicates)}")

    overrides = load_label_file(label_file) if label_file else {}
    labels: list[str] = []
    unlabelled = []
    for filename, field_label in zip(filenames, field_labels):
        label = overrides.get(filename) or field_label or class_from_filename(filename)
        if label is None:
            unlabelled.append(filename)
        labels.append(label or "")
    if unlabelled:
        raise DatasetError(
            f"{source}: {len(unlabelled)} images have no scene class (no label field, no "
            f"'<class>_<n>' file name{', not in the label file' if label_file else ''}): "
            f"{_listing(unlabelled)}; pass a label file")
    if check_images:
        _check_images(source, image_dir, filenames)
    class_names = tuple(sorted(set(labels)))
    lookup = {c: i for i, c in enumerate(class_names)}
    return CaptionDataset(
        name=name, image_dir=image_dir, filenames=tuple(filenames), captions=tuple(captions),
        labels=np.array([lookup[l] for l in labels], dtype=np.int32), class_names=class_names,
        source=source)


def load_karpathy(caption_file: str, image_dir: str = "", label_file: str = "",
                  name: str = "", check_images: bool = True) -> CaptionDataset:
    """Reads a Karpathy-layout caption JSON; `image_dir` defaults to the folder beside it."""
    text = _read_text(caption_file, "caption file")
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{caption_file}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise DatasetError(f"{caption_file}: expected an object with an 'images' list (Karpathy layout)")
    filenames, captions, field_labels = [], [], []
    for i, item in enumerate(content["images"]):
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str) or not item["filename"]:
            raise DatasetError(f"{caption_file}: images[{i}] has no 'filename'")
        filename = item["filename"]
        sentences = item.get("sentences")
        if not isinstance(sentences, list):
            raise DatasetError(f"{caption_file}: image {filename!r} has no 'sentences' list")
        raws = [s.get("raw") if isinstance(s, dict) else None for s in sentences]
        captions.append(_check_captions(caption_file, filename, raws))
        filenames.append(filename)
        label = next((item[f] for f in LABEL_FIELDS if item.get(f) not in (None, "")), None)
        field_labels.append(None if label is None else str(label))
    if not filenames:
        raise DatasetError(f"{caption_file}: the 'images' list is empty")
    image_dir = image_dir or find_image_dir(os.path.dirname(os.path.abspath(caption_file)))
    return _build(name or content.get("dataset") or "karpathy", caption_file, image_dir, filenames,
                  captions, field_labels, label_file or None, check_images,
                  [f": images[{i}]" for i in range(len(filenames))])


def load_csv(caption_file: str, image_dir: str = "", label_file: str = "", name: str = "csv",
             check_images: bool = True) -> CaptionDataset:
    """Reads `image,caption[,label]` rows (header required); `image_dir` defaults to the
    `images` folder beside the CSV."""
    text = _read_text(caption_file, "caption file")
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise DatasetError(f"{caption_file}: the CSV is empty") from None
    except csv.Error as e:
        raise DatasetError(f"{caption_file}: unreadable CSV ({e})") from None
    if header[:2] != ["image", "caption"] or len(header) > 3 or (len(header) == 3 and header[2] != "label"):
        raise DatasetError(f"{caption_file}: header must be 'image,caption' or 'image,caption,label', got {','.join(header)!r}")
    grouped: dict[str, list[str]] = {}
    row_labels: dict[str, str | None] = {}
    first_lines: dict[str, int] = {}
    try:
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DatasetError(f"{caption_file}, line {line_no}: expected {len(header)} fields, got {len(row)}")
            image, caption = row[0].strip(), row[1]
            if not image:
                raise DatasetError(f"{caption_file}, line {line_no}: empty image name")
            if not caption.strip():
                raise DatasetError(f"{caption_file}, line {line_no}: image {image!r}: empty caption")
            label = row[2].strip() if len(row) == 3 else None
            if image in row_labels and label != row_labels[image]:
                raise DatasetError(f"{caption_file}, line {line_no}: image {image!r} has two labels "
                                   f"({row_labels[image]!r} and {label!r})")
            grouped.setdefault(image, []).append(caption)
            first_lines.setdefault(image, line_no)
            row_labels[image] = label or None
    except csv.Error as e:
        raise DatasetError(f"{caption_file}: unreadable CSV ({e})") from None
    if not grouped:
        raise DatasetError(f"{caption_file}: no rows after the header")
    filenames = list(grouped)
    captions = [_check_captions(caption_file, f, grouped[f]) for f in filenames]
    image_dir = image_dir or os.path.join(os.path.dirname(os.path.abspath(caption_file)), "images")
    return _build(name, caption_file, image_dir, filenames, captions,
                  [row_labels[f] for f in filenames], label_file or None, check_images,
                  [f", line {first_lines[f]}" for f in filenames])


def _find_caption_file(data_dir: str, extensions: Iterable[str]) -> str:
    if not os.path.isdir(data_dir):
        raise DatasetError(f"{data_dir}: data folder does not exist")
    found = sorted(f for f in os.listdir(data_dir) if f.lower().endswith(tuple(extensions)))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise DatasetError(f"{data_dir}: found {what} caption files ending in {'/'.join(extensions)}; pass caption_file")
    return os.path.join(data_dir, found[0])


def load_dataset(data_config, check_images: bool = True) -> CaptionDataset:
    """Loads the dataset a `DataConfig` names (the embedded default is built on first use)."""
    data_dir = data_config.data_dir
    if data_config.dataset == "sentinel2_default":
        from rs_hashing.data import sentinel2_default  # pylint: disable=import-outside-toplevel

        data_dir = data_dir or sentinel2_default.default_data_dir()
        csv_path = os.path.join(data_dir, "captions.csv")
        if not os.path.exists(csv_path):
            csv_path = sentinel2_default.build_sentinel2_default(data_dir)
        return load_csv(csv_path, data_config.image_dir, data_config.label_file,
                        name="sentinel2_default", check_images=check_images)
    if not data_dir and not data_config.caption_file:
        raise DatasetError(f"dataset {data_config.dataset!r} needs data_dir (or caption_file)")
    if data_config.dataset == "csv":
        caption_file = data_config.caption_file or _find_caption_file(data_dir, (".csv",))
        return load_csv(caption_file, data_config.image_dir, data_config.label_file, check_images=check_images)
    caption_file = data_config.caption_file or _find_caption_file(data_dir, (".json",))
    name = data_config.dataset if data_config.dataset != "karpathy" else ""
    return load_karpathy(caption_file, data_config.image_dir, data_config.label_file, name=name,
                         check_images=check_images)

