"""Indexing an image archive with a trained run, and searching it by text or image.

The library side of `rs-hashing index` and `rs-hashing search`:

* `folder_items` / `dataset_items` list an archive (a folder of images, or a caption
  dataset with its captions and classes) as per-image metadata dicts;
* `index_archive` encodes the images with a run's model and saves a `HammingIndex`
  whose `info` records the run, its weights fingerprint and the image folder;
* `index_scenes` tiles scenes and does the same, running an `IndexingPlan`'s tasks in
  this process (`distributed_indexing` runs the same plans on Dask workers);
* `open_index` loads such an index and refuses one made with another model;
* `search_archive` answers one sentence or one image with the top k.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rs_hashing import config as config_lib
from rs_hashing.data.loaders import load_dataset
from rs_hashing.errors import DatasetError
from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.geo.scene import Scene
from rs_hashing.geo.scene_reader import SceneReader
from rs_hashing.geo.tiler import Tiler
from rs_hashing.hashing_model import HashingModel
from rs_hashing.image_files import IMAGE_EXTENSIONS
from rs_hashing.index.hamming_index import DEFAULT_APPROXIMATE_ABOVE, HammingIndex
from rs_hashing.index.indexing_plan import IndexingPlan



def files_items(paths: Sequence[str], root: str | None = None) -> tuple[str, list[dict[str, str]]]:
    """Every image among `paths`: image files as given, folders searched recursively
    (sorted, hidden entries skipped). Files of other types inside folders are skipped and
    counted on stdout; a named file that is not an image is an error.

    Returns:
        (root, [{"file": path relative to root}]) sorted by that path; root is the
        given one or else the deepest folder holding every image.

    Raises:
        DatasetError: a path that does not exist, a named file that is not an image, or
            no image at all.
    """
    files, skipped = [], 0
    for path in paths:
        path = os.path.abspath(path)
        if os.path.isdir(path):
            for directory, subdirectories, names in os.walk(path):
                subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
                for name in names:
                    if name.startswith("."):
                        continue
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        files.append(os.path.join(directory, name))
                    else:
                        skipped += 1
        elif os.path.isfile(path):
            if not path.lower().endswith(IMAGE_EXTENSIONS):
                raise DatasetError(f"{path}: not an image file ({', '.join(IMAGE_EXTENSIONS)})")
            files.append(path)
        else:
            raise DatasetError(f"{path}: no such image file or folder")
    if not files:
        raise DatasetError(f"{', '.join(paths)}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    if skipped:
        print(f"skipped {skipped} file(s) that are not images ({', '.join(IMAGE_EXTENSIONS)})")
    root = os.path.abspath(root) if root else os.path.commonpath([os.path.dirname(f) for f in files])
    return root, [{"file": name} for name in sorted({os.path.relpath(f, root) for f in files})]


def folder_items(folder: str) -> tuple[str, list[dict[str, str]]]:
    """Every image under `folder` (see `files_items`), relative to the folder itself.

    Raises:
        DatasetError: the folder does not exist or holds no image.
    """
    root = os.path.abspath(folder)
    if not os.path.isdir(root):
        raise DatasetError(f"{folder}: image folder does not exist")
    return files_items([root], root=root)


def dataset_items(data_config: config_lib.DataConfig) -> tuple[str, list[dict[str, str]]]:
    """Every image of a caption dataset with its first caption and its class.

    Returns:
        (absolute image folder, [{"file", "caption", "class"}]) in dataset order.
    """
    dataset = load_dataset(data_config)
    items = [{"file": filename, "caption": captions[0], "class": dataset.class_names[label]}
             for filename, captions, label in zip(dataset.filenames, dataset.captions,
                                                  dataset.labels.tolist())]
    return os.path.abspath(dataset.image_dir), items


def data_config_for_archive(run_config: config_lib.Config, preset: str | None = None,
                            overrides: Mapping[str, Any] | None = None) -> config_lib.DataConfig:
    """The dataset to index: the run's own unless a preset is named, with single
    `data` fields (dataset, data_dir, caption_file, image_dir, label_file) overridden.

    Raises:
        KeyError: an override that is not a `data` field.
    """
    base = config_lib.get_preset(preset) if preset else run_config
    data_fields = {name for name in config_lib.DataConfig.__dataclass_fields__}
    unknown = [key for key in (overrides or {}) if key not in data_fields]
    if unknown:
        raise KeyError(f"not data fields: {', '.join(unknown)}")
    given = {f"data.{key}": value for key, value in (overrides or {}).items() if value is not None}
    return config_lib.apply_overrides(base, given).data


def index_archive(model: HashingModel, root: str, items: Sequence[Mapping[str, Any]],
                  out_path: str, batch_size: int | None = None, progress: bool = True,
                  kind: str = "auto", nlist: int | None = None, nprobe: int | None = None,
                  source: str = "",
                  approximate_above: int = DEFAULT_APPROXIMATE_ABOVE) -> HammingIndex:
    """Encodes the images of `items` (paths relative to `root`) and saves the index.

    Args:
        model: the trained run.
        root: folder the item file names are relative to.
        items: metadata per image, each with a "file" key; ids are their positions.
        out_path: index file to write.
        batch_size, progress: passed to `HashingModel.encode_images`.
        kind, nlist, nprobe, approximate_above: passed to `HammingIndex`.
        source: a few words on where the images came from (kept in the index info).

    Returns:
        The saved index.
    """
    paths = [os.path.join(root, item["file"]) for item in items]
    started = time.perf_counter()
    codes = model.encode_images(paths, batch_size=batch_size, progress=progress).codes
    info = {"run": os.path.abspath(model.run_dir), "model": model.fingerprint(),
            "image_root": os.path.abspath(root), "source": source,
            "image_size": model.image_size,
            "encode_seconds": round(time.perf_counter() - started, 2)}
    index = HammingIndex(model.bits, kind=kind, approximate_above=approximate_above,
                         nlist=nlist, nprobe=nprobe, info=info)
    index.add(codes, metadata=[dict(item) for item in items])
    index.save(out_path)
    return index


def index_scenes(model: HashingModel, sources: Sequence[str], out_path: str,
                 tiler: Tiler, bands: Sequence[int | str] | None = None, nodata: float | None = None,
                 batch_size: int | None = None, progress: bool = True, kind: str = "auto",
                 nlist: int | None = None, nprobe: int | None = None,
                 approximate_above: int = DEFAULT_APPROXIMATE_ABOVE,
                 tiles_per_task: int | None = None) -> HammingIndex:
    """Tiles GeoTIFF/COG scenes (files, folders, STAC Item or ItemCollection JSON),
    encodes the tiles in batches as they are read, and saves the index.

    One process runs the `IndexingPlan`'s tasks in order, as Dask workers would
    (`distributed_indexing`): a batch is the kept tiles of `batch_size` consecutive
    windows of a scene, so the codes are the same however the job runs, and
    `tiles_per_task` changes nothing but how often the progress bar moves.

    Each item's metadata is its tile's (`Tile.metadata`: scene, window, time, bounds,
    CRS, footprint in EPSG:4326, radiometry); the index info records every scene's
    source and bands, so a tile can be read again (thumbnails, locator pictures), and the
    tiling report (tiles kept, skipped for nodata, partial edge tiles).

    Raises:
        SceneError: a source that cannot be read as scenes (the message names it).
        DatasetError: no tile at all.
    """
    plan = IndexingPlan.for_scenes(model, sources, tiler, bands=bands, nodata=nodata, batch_size=batch_size,
                                   tiles_per_task=tiles_per_task)
    started = time.perf_counter()
    encoded = []
    with tqdm(total=plan.total, desc="tiles", unit="tile", disable=not progress) as bar:
        for task in plan.tasks:
            encoded.append(task.encode(model))
            bar.update(task.size)
    index = plan.merged_index(encoded, seconds=time.perf_counter() - started, kind=kind, nlist=nlist,
                              nprobe=nprobe, approximate_above=approximate_above)
    index.save(out_path)
    return index


def tile_pixels(index_info: Mapping[str, Any], item: Mapping[str, Any]) -> np.ndarray:
    """The uint8 pixels of an indexed tile, read again from its scene with the radiometry
    it was indexed with.

    Raises:
        SceneError, ValueError: the scene's source is gone or changed.
    """
    spec = index_info["scenes"][item["scene_id"]]
    scene = next(s for s in Scene.discover(spec["source"], spec["bands"] or None, spec.get("nodata"))
                 if s.scene_id == item["scene_id"])
    window = item["window"]
    with SceneReader(scene) as reader:
        pixels, _ = reader.read((window["col_off"], window["row_off"], window["width"], window["height"]))
    return Radiometry.from_dict(item["radiometry"]).apply(pixels)


def open_index(path: str, model: HashingModel) -> HammingIndex:
    """Loads an index for searching with `model`'s run.

    Raises:
        ValueError: the file is not a valid index (see `HammingIndex.load`), its codes
            have another length, or it was made with other weights.
    """
    index = HammingIndex.load(path, bits=model.bits)
    recorded = index.info.get("model")
    if recorded and recorded != model.fingerprint():
        raise ValueError(
            f"{path}: was made with the run {index.info.get('run')} (weights {recorded}), "
            f"not with {model.run_dir} (weights {model.fingerprint()}); its codes cannot "
            "be compared: rebuild it with `rs-hashing index`")
    return index


def search_archive(model: HashingModel, index: HammingIndex, text: str | None = None,
                   image: str | None = None, k: int = 10) -> list[dict[str, Any]]:
    """Top k archive items for one sentence or one image file (exactly one of them).

    Returns:
        [{"id", "hamming", **metadata}] sorted by (Hamming distance, id).
    """
    if (text is None) == (image is None):
        raise ValueError("give exactly one of text and image")
    if text is not None:
        codes = model.encode_texts([text]).codes
    else:
        codes = model.encode_images([image]).codes
    return index.search_items(codes, k)[0]
