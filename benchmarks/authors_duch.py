r"""The DUCH authors' own PyTorch code on rs_hashing's features and split.

    python -m benchmarks.authors_duch --data_dir=../shared/data/rsicd \
        --features=/path/to/rsicd_store --seed=42 --bits=64 --epochs=100 \
        --out=runs/authors_duch/seed42 [--python=/path/to/python-with-torch]

Runs the released code of Mikriukov et al. (github.com/comrados/duch, MIT licence; a
mirror of it is read with git, --authors_repo) on the features of rs_hashing's feature
store, so that the DUCH benchmark can put rs_hashing's DUCH and the authors' code side by
side on the same features and the same train / query / database split. `run_authors_duch`
is the function the benchmark calls; the command line is a thin wrapper around it.

Steps (all under --out):

1. `data/`: the store in the authors' input format. Four HDF5 files (dataset
   `image_emb` for `image_emb.h5` / `image_emb_aug.h5`, `caption_emb` for
   `caption_emb.h5` / `caption_emb_aug.h5`) with the store's arrays in the store's order
   (caption j of image i is row 5 i + j, as their `get_caption_idxs_from_img_idxs`
   assumes), and `dataset.json` (Karpathy layout: per image its file name, `classcode` =
   the store's label, and its 5 captions). Every image must have exactly 5 captions, as
   their code hard-codes; otherwise the export is refused. `export.json`, written last,
   marks a finished export, which is reused.
2. `code/`: a fresh copy of HEAD of their repository (file by file with git; a mirror
   that lacks their bundled caption JSONs under data/, which are not read here, is
   fine: `authors_files_left_out` lists them), patched as listed below, run as
   `python rs_hashing_run.py --dataset rsicd --preset default --bit BITS --epochs EPOCHS
   --tag rs_hashing_seedSEED` in `code/` (their `main.py` flow) by the --python
   interpreter, which needs torch and h5py. Output goes to `authors_train.log`. Wall
   time, CPU time (user + system) and peak RSS of that child come from `os.wait4`, i.e.
   the rusage of exactly that process.
3. Their final query / database codes (dumped when their `eval` computes them, after
   the last epoch) are scored with rs_hashing's `metrics.map_at_k(protocol="duch")`,
   k = 20, relevant = same scene class, exactly as `rs_hashing.training.evaluation`
   scores rs_hashing's codes (sign(0) = +1, ties by database index). What their code
   printed (`Valid: mAP@20 ...`) is kept as `authors_printed`; it differs from ours
   only in how Hamming ties are ordered (their `calc_map_k` uses torch's unstable sort;
   with a stable sort it gives rs_hashing's numbers to float32 precision).
   `map@20_continuous` ranks by the cosine of the heads' continuous outputs
   (`metrics.map_at_k_by_similarity`, as rs_hashing's evaluation does).
4. Their split (train / query / database image indices) and the caption their code
   fed for every image are compared with rs_hashing's protocol split,
   `ProtocolSplit.make(..., split_seed=SEED, caption_seed=SEED)` with the rsicd preset's
   fractions (what rs_hashing trains and tests on without a validation split):
   `split_matches`, `captions_match` (and `caption_mismatches` per part).
5. `result.json`: seed, bits, epochs, i2t, t2i, authors_printed, wall_s, cpu_s,
   peak_rss_mb, split_matches, captions_match, plus details (all four tasks, the
   truncated and the continuous mAP, seconds per epoch, their commit, threads, torch
   version). A finished `result.json` is reused (for the same seed / bits / epochs), so a
   killed benchmark resumes.

Patches to their code. Their files are otherwise byte-identical to their commit (the
result records it); every change is one of these:

* `configs/base_config.py`: `self.seed = 42` -> SEED (it seeds their split and their
  caption picks); `self.cuda_device = 'cuda:0'` -> `'cpu'` (their controller falls back
  to the CPU anyway when CUDA is absent).
* `configs/config.py`, just before `cfg = ConfigModel(args)`: the five input paths of
  the `default` preset point at `data/` (image_emb_for_model = original images,
  image_emb_aug_for_model = augmented images, caption_emb_for_model = captions,
  caption_emb_aug_for_model = augmented captions, dataset_json_for_model = labels);
  `image_dim` / `text_dim` = the store's feature sizes (theirs: 512 / 768, ResNet18 and
  BERT); `label_dim` = the store's class count (theirs: 31 for RSICD; only the
  evaluation's one-hot labels use it); `valid_freq = --epochs` (theirs: 100 with 100
  epochs, i.e. one evaluation after the last epoch; kept so for shorter runs);
  `torch.set_num_threads(THREADS)` (default: the CPUs this process may use) and
  `torch.manual_seed(SEED)` (their code seeds only Python's `random`, so weight
  initialisation, batch order and the random initial B would differ run to run).
  Everything else (batch 256, lr 1e-4 with the x0.8 steps, hidden 4096, alpha / beta /
  gamma, contrastive weights, the `default` preset) is theirs.
* `logs/log.txt` (their own old training log, shipped in the repository) is deleted, so
  that the log their logger appends to holds this run only.
* `rs_hashing_run.py` (a new file) imports their `main` and wraps these at run time
  before calling `main.main()`:
  - `dataset.datasets.select_idxs` records its results (the caption pick per image);
  - `main.get_dataloaders` writes `rs_hashing_split.npz` (their train / query /
    database image indices and each image's caption pick 0..4) after their split;
  - `ControllerDUCH.get_codes_labels_indexes` writes `rs_hashing_codes.npz` (the
    query / database image and text codes, labels and image indices it returns to
    their `eval`, and the hash heads' continuous outputs they are the signs of);
  - `DUCH.generate_img_code` / `generate_txt_code` record those continuous outputs
    (returned unchanged);
  - `torch.cuda.device` becomes a no-op for a CPU device when CUDA is absent: their
    `save_hash_codes` (called by `eval`) enters `torch.cuda.device(self.device)`, which
    torch refuses for "cpu" (ValueError), so their code cannot finish on a CPU as is.

Notes on their code, unchanged here: `train_epoch` feeds `txt2 = txt1` (the augmented
captions are read but never used in training); the query / database datasets
(`DatasetDuplet1`) keep the un-subset caption index list (only the returned index, not
the caption fed, is off), so the caption picks are taken from `select_idxs`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from rs_hashing import config as config_lib
from rs_hashing import metrics
from rs_hashing.atomic_files import atomic_path, write_json_atomic
from rs_hashing.codes import binarize
from rs_hashing.data import loaders
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.features.feature_store import FeatureStore

AUTHORS_REPO = "/work/.mirror/comrados+duch/repo"
CAPTIONS_PER_IMAGE = 5  # hard-coded in their data handlers and datasets
MAP_K = 20
RESULT_KEYS = ("seed", "bits", "epochs", "i2t", "t2i", "authors_printed", "wall_s", "cpu_s",
               "peak_rss_mb", "split_matches", "captions_match")
EXPORT_FILES = {  # their config attribute -> (file under data/, HDF5 dataset, store array)
    "image_emb_for_model": ("image_emb.h5", "image_emb", "image"),
    "image_emb_aug_for_model": ("image_emb_aug.h5", "image_emb", "image_aug"),
    "caption_emb_for_model": ("caption_emb.h5", "caption_emb", "text"),
    "caption_emb_aug_for_model": ("caption_emb_aug.h5", "caption_emb", "text_aug"),
}
DATASET_JSON = "dataset.json"
EXPORT_MARKER = "export.json"
SPLIT_DUMP = "rs_hashing_split.npz"
CODES_DUMP = "rs_hashing_codes.npz"
RUNNER = "rs_hashing_run.py"
PARTS = ("train", "query", "database")

RUNNER_SOURCE = '''\
"""Runs the DUCH authors' main.main() with run-time wraps; written by
rs_hashing's benchmarks/authors_duch.py (its docstring lists them). Run in this folder
with main.py's arguments."""

import contextlib

import numpy as np
import torch

import main  # parses the command line (configs.config) and imports their modules
import dataset.datasets
from controller_DUCH import ControllerDUCH
from models.DUCH import DUCH

_SELECTIONS = []
_select_idxs = dataset.datasets.select_idxs


def _recording_select_idxs(seq_length, n_to_select, n_from_select, seed=42):
    result = _select_idxs(seq_length, n_to_select, n_from_select, seed=seed)
    _SELECTIONS.append((seq_length, n_to_select, n_from_select, [list(r) for r in result]))
    return result


_get_dataloaders = main.get_dataloaders


def _get_dataloaders_and_dump_split(*args):
    start = len(_SELECTIONS)
    dataloaders = _get_dataloaders(*args)
    selections = _SELECTIONS[start:]
    if len(selections) != 3:
        raise RuntimeError(f"expected 3 caption selections (train, query, db), got {len(selections)}")
    dump = {"torch_version": np.array(torch.__version__)}
    for name, loader, (length, n_to, n_from, picks) in zip(("train", "query", "database"),
                                                           dataloaders, selections):
        images = np.asarray(loader.dataset.idxs, np.int64)
        local = np.asarray(picks[0], np.int64)
        if (n_to, n_from, length) != (1, 5, 5 * len(images)) or not np.array_equal(
                local // 5, np.arange(len(images))):
            raise RuntimeError(f"{name}: unexpected caption selection {(length, n_to, n_from)}")
        dump[name] = images
        dump[name + "_caption"] = local % 5
    train_caption_index = np.asarray(dataloaders[0].dataset.idxs_cap, np.int64)
    if not np.array_equal(train_caption_index, dump["train"] * 5 + dump["train_caption"]):
        raise RuntimeError("the training set's caption indices disagree with the recorded picks")
    np.savez("rs_hashing_split.npz", **dump)
    return dataloaders


_OUTPUTS = {"image": [], "text": []}
_generate_img_code = DUCH.generate_img_code
_generate_txt_code = DUCH.generate_txt_code


def _recording_generate_img_code(self, i):
    out = _generate_img_code(self, i)
    _OUTPUTS["image"].append(out.detach().cpu().numpy())
    return out


def _recording_generate_txt_code(self, t):
    out = _generate_txt_code(self, t)
    _OUTPUTS["text"].append(out.detach().cpu().numpy())
    return out


_get_codes = ControllerDUCH.get_codes_labels_indexes


def _get_codes_and_dump(self):
    _OUTPUTS["image"].clear()
    _OUTPUTS["text"].clear()
    out = _get_codes(self)
    qBX, qBY, rBX, rBY, qLX, qLY, rLX, rLY, (qIX, qIY, rIX, rIY) = out
    as_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
    continuous = {}
    for modality, query, database in (("image", qBX, rBX), ("text", qBY, rBY)):
        values = np.concatenate(_OUTPUTS[modality])  # the query loader's batches, then the database's
        if len(values) != len(query) + len(database):
            raise RuntimeError(f"{len(values)} {modality} outputs for {len(query)} + {len(database)} codes")
        continuous["query_" + modality] = values[:len(query)]
        continuous["database_" + modality] = values[len(query):]
        for key, codes in (("query_" + modality, query), ("database_" + modality, database)):
            if not np.array_equal(np.sign(continuous[key]), as_np(codes)):
                raise RuntimeError(f"the recorded {key} outputs are not the ones their codes are the signs of")
    np.savez("rs_hashing_codes.npz",
             query_image=as_np(qBX), query_text=as_np(qBY),
             database_image=as_np(rBX), database_text=as_np(rBY),
             **{key + "_continuous": value for key, value in continuous.items()},
             query_labels=as_np(qLX).argmax(1), database_labels=as_np(rLX).argmax(1),
             query_text_labels=as_np(qLY).argmax(1), database_text_labels=as_np(rLY).argmax(1),
             query_images=as_np(qIX), database_images=as_np(rIX))
    return out


if not torch.cuda.is_available():
    _cuda_device = torch.cuda.device

    def _device_or_nothing(device):
        if isinstance(device, torch.device) and device.type == "cpu":
            return contextlib.nullcontext()
        return _cuda_device(device)

    torch.cuda.device = _device_or_nothing

dataset.datasets.select_idxs = _recording_select_idxs
DUCH.generate_img_code = _recording_generate_img_code
DUCH.generate_txt_code = _recording_generate_txt_code
main.get_dataloaders = _get_dataloaders_and_dump_split
ControllerDUCH.get_codes_labels_indexes = _get_codes_and_dump

if __name__ == "__main__":
    main.main()
'''

_EPOCH_LINE = re.compile(r"\[(\d+)/(\d+)\] Train: ([0-9.]+)s")
_MAP_LINE = re.compile(r"Valid: mAP@20, avg: ([0-9.]+), i->t: ([0-9.]+), t->i: ([0-9.]+), "
                       r"i->i: ([0-9.]+), t->t: ([0-9.]+)")


# --- 1. Export --------------------------------------------------------------------------


def check_five_captions(store: FeatureStore) -> None:
    """Refuses a store whose images do not all have exactly 5 captions."""
    counts = np.diff(np.asarray(store.caption_offsets))
    bad = np.flatnonzero(counts != CAPTIONS_PER_IMAGE)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{store.path}: the authors' DUCH code needs exactly {CAPTIONS_PER_IMAGE} captions per "
            f"image (caption j of image i is row 5 i + j there); {bad.size} images differ, the first "
            f"is image {i} ({store.manifest['filenames'][i]!r}) with {int(counts[i])}")


def export_store(store: FeatureStore, dataset, folder: str) -> dict[str, str]:
    """Writes the store in the authors' input format into `folder` (reused when done).

    Returns their config attribute -> absolute path, for the four HDF5 files and
    `dataset_json_for_model`.
    """
    check_five_captions(store)
    if len(dataset) != store.num_images:
        raise ValueError(f"dataset has {len(dataset)} images, the store {store.num_images}")
    folder = os.path.abspath(folder)
    paths = {attr: os.path.join(folder, file) for attr, (file, _, _) in EXPORT_FILES.items()}
    paths["dataset_json_for_model"] = os.path.join(folder, DATASET_JSON)
    marker = {"features": os.path.abspath(store.path), "fingerprint": store.manifest.get("fingerprint"),
              "num_images": store.num_images, "num_captions": int(len(store.text)),
              "image_dim": store.image_dim, "text_dim": store.text_dim,
              # A store extracted again (same data, other features) is exported again.
              "arrays": {name: [os.stat(os.path.join(store.path, f"{name}.npy")).st_size,
                                os.stat(os.path.join(store.path, f"{name}.npy")).st_mtime_ns]
                         for name in ("image", "image_aug", "text", "text_aug", "labels")}}
    marker_path = os.path.join(folder, EXPORT_MARKER)
    if os.path.isfile(marker_path) and all(os.path.isfile(p) for p in paths.values()):
        with open(marker_path, encoding="utf-8") as f:
            if json.load(f) == marker:
                return paths
    try:
        import h5py  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ImportError("the export to the authors' HDF5 format needs h5py (pip install h5py)") from None
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(marker_path):
        os.remove(marker_path)
    for attr, (file, name, array_name) in EXPORT_FILES.items():
        array = getattr(store, array_name)
        with atomic_path(paths[attr]) as tmp:
            with h5py.File(tmp, "w") as hf:
                out = hf.create_dataset(name, shape=array.shape, dtype=np.float32)
                for start in range(0, len(array), 8192):
                    out[start:start + 8192] = np.asarray(array[start:start + 8192], np.float32)
    labels = np.asarray(store.labels)
    images = []
    for i, (filename, captions) in enumerate(zip(dataset.filenames, dataset.captions)):
        images.append({"imgid": i, "filename": filename, "classcode": int(labels[i]),
                       "classname": dataset.class_names[int(labels[i])],
                       "sentences": [{"raw": c, "imgid": i, "sentid": CAPTIONS_PER_IMAGE * i + j}
                                     for j, c in enumerate(captions)]})
    with atomic_path(paths["dataset_json_for_model"]) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"dataset": dataset.name, "images": images}, f)
    write_json_atomic(marker_path, marker)
    return paths


# --- 2. Their code, patched -------------------------------------------------------------


def _replace_once(text: str, old: str, new: str, file: str) -> str:
    if text.count(old) != 1:
        raise RuntimeError(f"{file}: expected exactly one {old!r} in the authors' code, found "
                           f"{text.count(old)}; their code changed, check the patches")
    return text.replace(old, new)


def _patch_file(path: str, edits: list[tuple[str, str]]) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for old, new in edits:
        text = _replace_once(text, old, new, path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def config_block(paths: dict[str, str], *, seed: int, threads: int, image_dim: int, text_dim: int,
                 label_dim: int) -> str:
    """The lines put before their `cfg = ConfigModel(args)`."""
    lines = ["# --- rs_hashing benchmarks/authors_duch.py: inputs, sizes, threads, seed, evaluation ---",
             "import torch as _rs_hashing_torch",
             f"_rs_hashing_torch.set_num_threads({int(threads)})",
             f"_rs_hashing_torch.manual_seed({int(seed)})"]
    lines += [f"ConfigModel.{attr} = {path!r}" for attr, path in sorted(paths.items())]
    lines += [f"ConfigModel.image_dim = {int(image_dim)}",
              f"ConfigModel.text_dim = {int(text_dim)}",
              f"ConfigModel.label_dim = {int(label_dim)}",
              "ConfigModel.valid_freq = args.epochs  # one evaluation, after the last epoch",
              "# --- end of rs_hashing patch ---"]
    return "\n".join(lines) + "\n"


def copy_repository(authors_repo: str, code_dir: str) -> tuple[str, list[str]]:
    """Writes the files of HEAD of `authors_repo` into `code_dir` (made afresh).

    Returns (commit, files left out). A mirror may lack its largest blobs; only their
    bundled caption JSONs under data/ (RSICD.json, augmented_*.json, not read here: the
    config points at our export) may be missing, anything else is an error.
    """
    git = ["git", "-C", authors_repo]
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    listing = subprocess.run(git + ["ls-tree", "-r", "-z", commit], check=True, capture_output=True).stdout
    if os.path.exists(code_dir):
        shutil.rmtree(code_dir)
    os.makedirs(code_dir)
    left_out = []
    for entry in listing.decode().split("\0"):
        if not entry:
            continue
        meta, path = entry.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind != "blob" or mode == "120000" or os.path.isabs(path) or ".." in path.split("/"):
            raise RuntimeError(f"{authors_repo}: unexpected entry {entry!r} in their tree")
        blob = subprocess.run(git + ["cat-file", "blob", sha], capture_output=True)
        if blob.returncode != 0:
            if path.startswith("data/") and path.endswith(".json"):
                left_out.append(path)
                continue
            raise RuntimeError(f"{authors_repo}: cannot read {path} ({blob.stderr.decode().strip()})")
        target = os.path.join(code_dir, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(blob.stdout)
        if mode == "100755":
            os.chmod(target, 0o755)
    return commit, left_out


def prepare_code(authors_repo: str, code_dir: str, paths: dict[str, str], *, seed: int, threads: int,
                 image_dim: int, text_dim: int, label_dim: int) -> tuple[str, list[str]]:
    """Copies their repository into `code_dir` (fresh) and applies the patches;
    returns (commit, files of theirs left out)."""
    commit, left_out = copy_repository(authors_repo, code_dir)
    _patch_file(os.path.join(code_dir, "configs", "base_config.py"), [
        ("self.seed = 42  # random seed", f"self.seed = {int(seed)}  # random seed  (rs_hashing: --seed)"),
        ("self.cuda_device = 'cuda:0'", "self.cuda_device = 'cpu'  # rs_hashing: CPU")])
    _patch_file(os.path.join(code_dir, "configs", "config.py"), [
        ("\ncfg = ConfigModel(args)", "\n" + config_block(paths, seed=seed, threads=threads, image_dim=image_dim,
                                                            text_dim=text_dim, label_dim=label_dim)
         + "cfg = ConfigModel(args)")])
    old_log = os.path.join(code_dir, "logs", "log.txt")
    if os.path.exists(old_log):
        os.remove(old_log)
    with open(os.path.join(code_dir, RUNNER), "w", encoding="utf-8") as f:
        f.write(RUNNER_SOURCE)
    return commit, left_out


def run_child(command: list[str], cwd: str, log_path: str, threads: int) -> dict:
    """Runs `command`; returns its exit code, wall seconds, CPU seconds and peak RSS (MB)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    with open(log_path, "w", encoding="utf-8") as log:
        start = time.monotonic()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall = time.monotonic() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": process.returncode, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024.0}  # Linux: ru_maxrss in KiB


def parse_log(text: str) -> tuple[dict | None, list[float]]:
    """(their last printed mAP@20 line as a dict, or None; seconds of each epoch)."""
    epochs = [float(m.group(3)) for m in _EPOCH_LINE.finditer(text)]
    found = _MAP_LINE.findall(text)
    if not found:
        return None, epochs
    avg, i2t, t2i, i2i, t2t = (float(v) for v in found[-1])
    return {"i2t": i2t, "t2i": t2i, "i2i": i2i, "t2t": t2t, "avg": avg}, epochs


# --- 3. and 4. Scores and split ---------------------------------------------------------


def compare_split(theirs: dict[str, np.ndarray], ours: ProtocolSplit) -> dict:
    """Their split / caption picks (from `rs_hashing_split.npz`) against `ours`."""
    split_matches = all(np.array_equal(np.asarray(theirs[p]), getattr(ours, p)) for p in PARTS)
    mismatches = {}
    for part in PARTS:
        images = np.asarray(theirs[part])
        if np.array_equal(images, getattr(ours, part)):
            mismatches[part] = int(np.sum(np.asarray(theirs[part + "_caption"]) != ours.caption_choice[images]))
        else:
            mismatches[part] = None  # not comparable image by image
    captions_match = split_matches and all(v == 0 for v in mismatches.values())
    return {"split_matches": bool(split_matches), "captions_match": bool(captions_match),
            "caption_mismatches": mismatches}


def score_codes(codes: dict[str, np.ndarray], split: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    """mAP@20 (the authors' definition, rs_hashing's metric) of their dumped codes."""
    for part in ("query", "database"):
        if not np.array_equal(np.asarray(codes[f"{part}_images"]), np.asarray(split[part])):
            raise RuntimeError(f"their {part} codes are not in the order of their {part} split")
        expected = labels[np.asarray(split[part])]
        for key in (f"{part}_labels", f"{part}_text_labels"):
            if not np.array_equal(np.asarray(codes[key]), expected):
                raise RuntimeError(f"their {key} disagree with the store's labels")
    raw = {key: np.asarray(codes[key]) for key in ("query_image", "query_text", "database_image", "database_text")}
    zeros = int(sum(np.sum(v == 0) for v in raw.values()))
    signed = {key: binarize(v) for key, v in raw.items()}  # their sign(0) = 0; rs_hashing's +1
    query_labels, database_labels = labels[np.asarray(split["query"])], labels[np.asarray(split["database"])]
    relevant = metrics.relevance_from_labels(query_labels, database_labels)
    maps = {task: metrics.map_at_k(signed[f"query_{q}"], signed[f"database_{d}"], relevant, k=MAP_K,
                                   protocol="duch")
            for task, (q, d) in metrics.TASKS.items()}
    full = metrics.evaluate_retrieval(signed, {"query": query_labels, "database": database_labels}, k=MAP_K)
    continuous = {task: metrics.map_at_k_by_similarity(codes[f"query_{q}_continuous"],
                                                       codes[f"database_{d}_continuous"], relevant, k=MAP_K)
                  for task, (q, d) in metrics.TASKS.items()}
    return {"maps": maps, f"map@{MAP_K}_truncated": full[f"map@{MAP_K}_truncated"],
            f"map@{MAP_K}_continuous": continuous, "zero_code_values": zeros,
            "bits": int(signed["query_image"].shape[1])}


# --- The benchmark step -------------------------------------------------------------------


def _reuse(result_path: str, seed: int, bits: int, epochs: int) -> dict | None:
    if not os.path.isfile(result_path):
        return None
    with open(result_path, encoding="utf-8") as f:
        result = json.load(f)
    if any(key not in result for key in RESULT_KEYS):
        return None
    if (result["seed"], result["bits"], result["epochs"]) != (seed, bits, epochs):
        raise ValueError(f"{result_path} holds seed {result['seed']}, {result['bits']} bits, "
                         f"{result['epochs']} epochs, not seed {seed}, {bits} bits, {epochs} epochs; "
                         f"use another --out")
    return result


def summary_line(result: dict) -> str:
    printed = result.get("authors_printed") or {}
    theirs = (f" (their print: {printed['i2t']:.3f} / {printed['t2i']:.3f})" if printed else "")
    per_epoch = result.get("epoch_s_mean")
    return (f"authors' DUCH seed={result['seed']} bits={result['bits']} epochs={result['epochs']}: "
            f"mAP@20 I->T {result['i2t']:.3f} T->I {result['t2i']:.3f}{theirs}; "
            f"split_matches={result['split_matches']} captions_match={result['captions_match']}; "
            f"wall {result['wall_s']:.0f} s"
            + (f" ({per_epoch:.2f} s/epoch)" if per_epoch is not None else "")
            + f", CPU {result['cpu_s']:.0f} s, peak RSS {result['peak_rss_mb']:.0f} MB")


def run_authors_duch(data_dir: str, features: str, seed: int, bits: int, epochs: int, out: str,
                     python: str = sys.executable, threads: int | None = None,
                     authors_repo: str = AUTHORS_REPO, export_dir: str | None = None) -> dict:
    """Trains the authors' DUCH on the store `features` and scores it; see the module
    docstring. Returns (and writes to `out`/result.json) the result dict; a finished
    result.json for the same seed, bits and epochs is returned as is.

    `export_dir` (default `out`/data) may be shared by runs of several seeds.
    """
    seed, bits, epochs = int(seed), int(bits), int(epochs)
    out = os.path.abspath(out)
    result_path = os.path.join(out, "result.json")
    reused = _reuse(result_path, seed, bits, epochs)
    if reused is not None:
        return reused
    threads = int(threads or len(os.sched_getaffinity(0)))
    os.makedirs(out, exist_ok=True)

    config = config_lib.apply_overrides(config_lib.get_preset("rsicd"), {
        "data_dir": data_dir, "features": features, "split_seed": seed, "caption_seed": seed})
    dataset = loaders.load_dataset(config.data, check_images=False)
    store = FeatureStore.open(features, dataset)
    check_five_captions(store)
    paths = export_store(store, dataset, export_dir or os.path.join(out, "data"))
    labels = np.asarray(store.labels, np.int64)
    code_dir = os.path.join(out, "code")
    commit, left_out = prepare_code(authors_repo, code_dir, paths, seed=seed, threads=threads,
                          image_dim=store.image_dim, text_dim=store.text_dim,
                          label_dim=max(len(dataset.class_names), int(labels.max()) + 1))

    log_path = os.path.join(out, "authors_train.log")
    command = [python, RUNNER, "--dataset", "rsicd", "--preset", "default", "--bit", str(bits),
               "--epochs", str(epochs), "--tag", f"rs_hashing_seed{seed}"]
    usage = run_child(command, code_dir, log_path, threads)
    with open(log_path, encoding="utf-8", errors="replace") as f:
        log_text = f.read()
    if usage["returncode"] != 0:
        raise RuntimeError(f"the authors' code exited with status {usage['returncode']} "
                           f"(log: {log_path}); its last output:\n{log_text[-3000:]}")
    for dump in (SPLIT_DUMP, CODES_DUMP):
        if not os.path.isfile(os.path.join(code_dir, dump)):
            raise RuntimeError(f"the authors' code finished without writing {dump} (log: {log_path})")
    printed, epoch_seconds = parse_log(log_text)
    if len(epoch_seconds) != epochs:
        raise RuntimeError(f"{log_path}: {len(epoch_seconds)} training epochs logged, expected {epochs}")
    with np.load(os.path.join(code_dir, SPLIT_DUMP)) as f:
        split = {k: f[k] for k in f.files}
    with np.load(os.path.join(code_dir, CODES_DUMP)) as f:
        codes = {k: f[k] for k in f.files}

    ours = ProtocolSplit.make(len(dataset), [len(c) for c in dataset.captions], split_seed=seed,
                              caption_seed=seed, train_fraction=config.data.train_fraction,
                              query_fraction=config.data.query_fraction)
    comparison = compare_split(split, ours)
    scores = score_codes(codes, split, labels)
    if scores["bits"] != bits:
        raise RuntimeError(f"their codes have {scores['bits']} bits, expected {bits}")
    result = {
        "seed": seed, "bits": bits, "epochs": epochs,
        "i2t": scores["maps"]["i2t"], "t2i": scores["maps"]["t2i"],
        "authors_printed": printed,
        "wall_s": usage["wall_s"], "cpu_s": usage["cpu_s"], "peak_rss_mb": usage["peak_rss_mb"],
        "split_matches": comparison["split_matches"], "captions_match": comparison["captions_match"],
        # Details.
        f"map@{MAP_K}": scores["maps"], f"map@{MAP_K}_truncated": scores[f"map@{MAP_K}_truncated"],
        f"map@{MAP_K}_continuous": scores[f"map@{MAP_K}_continuous"],
        "caption_mismatches": comparison["caption_mismatches"],
        "zero_code_values": scores["zero_code_values"],
        "epoch_s": epoch_seconds, "epoch_s_mean": float(np.mean(epoch_seconds)),
        "split_sizes": {p: int(len(split[p])) for p in PARTS},
        "authors_commit": commit, "authors_files_left_out": left_out,
        "torch_version": str(split["torch_version"]), "threads": threads,
        "python": python, "features": os.path.abspath(features),
    }
    write_json_atomic(result_path, result)
    return result


# --- Command line -------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags; defined only when run as a program, so that the DUCH
    benchmark can import `run_authors_duch` next to its own flags of the same names."""
    flags.DEFINE_string("data_dir", None, "RSICD-AID folder.", required=True)
    flags.DEFINE_string("features", None, "Feature store of RSICD-AID.", required=True)
    flags.DEFINE_integer("seed", 42, "Seed of their split, caption picks and torch (rs_hashing's split_seed "
                         "and caption_seed for the comparison).")
    flags.DEFINE_integer("bits", 64, "Code length.")
    flags.DEFINE_integer("epochs", 100, "Training epochs (theirs: 100).")
    flags.DEFINE_string("out", None, "Folder of this run (data/, code/, authors_train.log, result.json).",
                        required=True)
    flags.DEFINE_string("python", sys.executable, "Interpreter with torch and h5py that runs their code.")
    flags.DEFINE_integer("threads", None, "torch threads (default: the CPUs this process may use).")
    flags.DEFINE_string("authors_repo", AUTHORS_REPO, "Git repository (bare or not) of comrados/duch.")
    flags.DEFINE_string("export_dir", None, "Folder of the exported inputs (default: --out/data).")


def main(argv):
    del argv
    result = run_authors_duch(FLAGS.data_dir, FLAGS.features, FLAGS.seed, FLAGS.bits, FLAGS.epochs, FLAGS.out,
                              python=FLAGS.python, threads=FLAGS.threads, authors_repo=FLAGS.authors_repo,
                              export_dir=FLAGS.export_dir)
    print(summary_line(result), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
