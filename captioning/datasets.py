"""Readers for caption data sets and the train/validation split (by image, never by caption).

Supported formats (``read_captions(path, fmt)``):

* ``flickr8k``: Flickr8k token files, one ``IMAGE#N<TAB>caption`` per line;
* ``coco``: MS-COCO caption JSON (``{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}``);
* ``tsv``: plain ``file<TAB>caption`` lines (a header line ``file<TAB>caption`` is skipped).

All return ``{image_name: [caption, ...]}`` in file order.  Plain Python, no Django.
"""

from __future__ import annotations

import json
import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

FORMATS = ("flickr8k", "coco", "tsv")


class DatasetError(ValueError):
    """A caption or split file is missing or malformed."""


def _lines(path: Path):
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
    except FileNotFoundError as exc:
        raise DatasetError(f"file not found: {path}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text: {exc}") from exc


def _tab_separated(path: Path, expected: str):
    """(line number, first field, caption) of each line of a tab-separated caption file."""
    for lineno, line in _lines(path):
        if "\t" not in line:
            raise DatasetError(f"{path}:{lineno}: expected '{expected}'")
        key, caption = line.split("\t", 1)
        yield lineno, key.strip(), caption.strip()


def _grouped(path: Path, pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Captions grouped by image in file order; a file without any caption is an error."""
    out: dict[str, list[str]] = OrderedDict()
    for image, caption in pairs:
        if image and caption:
            out.setdefault(image, []).append(caption)
    if not out:
        raise DatasetError(f"{path}: no captions found")
    return out


def read_flickr8k(path: str | os.PathLike) -> dict[str, list[str]]:
    path = Path(path)
    rows = _tab_separated(path, "IMAGE#N<TAB>caption")
    return _grouped(path, ((key.rsplit("#", 1)[0], caption) for _, key, caption in rows))


def read_tsv(path: str | os.PathLike) -> dict[str, list[str]]:
    path = Path(path)
    rows = _tab_separated(path, "file<TAB>caption")
    return _grouped(
        path,
        (
            (image, caption)
            for lineno, image, caption in rows
            if not (lineno == 1 and image.lower() in ("file", "image", "filename") and caption.lower() == "caption")
        ),
    )


def read_coco(path: str | os.PathLike) -> dict[str, list[str]]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"file not found: {path}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not valid COCO caption JSON: {exc}") from exc
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        raise DatasetError(f"{path}: COCO caption JSON needs 'images' and 'annotations'")
    names = {}
    for img in data["images"]:
        try:
            names[img["id"]] = img["file_name"]
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: image entry without id/file_name: {img!r}") from exc
    out: dict[str, list[str]] = OrderedDict()
    for ann in data["annotations"]:
        try:
            image = names[ann["image_id"]]
            caption = str(ann["caption"]).strip()
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: annotation with unknown image or no caption: {ann!r}") from exc
        if caption:
            out.setdefault(image, []).append(caption)
    if not out:
        raise DatasetError(f"{path}: no captions found")
    return out


def read_captions(path: str | os.PathLike, fmt: str) -> dict[str, list[str]]:
    readers = {"flickr8k": read_flickr8k, "coco": read_coco, "tsv": read_tsv}
    if fmt not in readers:
        raise DatasetError(f"unknown caption format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return readers[fmt](path)


def read_split(path: str | os.PathLike) -> list[str]:
    """Image names, one per line (blank lines and ``#`` comments ignored)."""
    path = Path(path)
    names = [line.strip() for _, line in _lines(path) if not line.strip().startswith("#")]
    if not names:
        raise DatasetError(f"{path}: empty split file")
    return names


def split_images(
    captions: dict[str, list[str]],
    *,
    train_split: str | os.PathLike | None = None,
    dev_split: str | os.PathLike | None = None,
    dev_fraction: float = 0.2,
    seed: int = 1234,
) -> tuple[list[str], list[str]]:
    """Train and validation image names.

    With split files: images listed there (that have captions); an image in both raises.
    Without: a seeded random ``1 - dev_fraction : dev_fraction`` split of the images (80:20).
    With only ``train_split``: the dev set is every other captioned image.
    """
    images = list(captions)
    if train_split or dev_split:
        train = [n for n in read_split(train_split) if n in captions] if train_split else None
        dev = [n for n in read_split(dev_split) if n in captions] if dev_split else None
        if train is None:
            dset = set(dev)
            train = [n for n in images if n not in dset]
        if dev is None:
            tset = set(train)
            dev = [n for n in images if n not in tset]
        overlap = set(train) & set(dev)
        if overlap:
            raise DatasetError(f"{len(overlap)} images are in both the train and the dev split, e.g. {sorted(overlap)[0]}")
        if not train:
            raise DatasetError("the train split has no captioned images")
        return train, dev
    order = sorted(images)
    random.Random(seed).shuffle(order)
    n_dev = int(round(len(order) * dev_fraction))
    dev = sorted(order[:n_dev])
    train = sorted(order[n_dev:])
    return train, dev


def describe(captions: dict[str, list[str]], names: Iterable[str]) -> dict:
    names = list(names)
    return {"images": len(names), "captions": sum(len(captions[n]) for n in names)}
