"""Hostile files: weights that are zip bombs or lie about their sizes, caption files
whose image names leave the image folder, and an extraction killed and resumed with
random (test) encoders."""

import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import types
import zipfile
import zlib

import keras
import numpy as np
import pytest

from rs_hashing.data import loaders
from rs_hashing.encoders.frozen_encoders import FrozenEncoders
from rs_hashing.encoders.torch_state_dict import load_torch_state_dict
from rs_hashing.errors import DatasetError
from rs_hashing.features import extraction
from rs_hashing.features.feature_extractor import FeatureExtractor
from tests import testing
from tests.encoders.torch_state_dict_test import (_Storage, _Tensor, _TorchLikePickler,
                                                   write_arrays)

# ---------------------------------------------------------------------- weights

_BOMB_BYTES = 1 << 30  # what the bomb inflates to: 1 GiB of zeros
_MIB = 1 << 20


def _state_pickle(numel: int, size: tuple | None = None, stride: tuple | None = None) -> bytes:
    """data.pkl of {"w": float32 tensor} over a storage that claims `numel` elements
    (no array of that size is made: the pickle only needs the count)."""
    storage = _Storage("0", "FloatStorage", types.SimpleNamespace(size=numel))
    tensor = _Tensor(storage, 0, size or (numel,), stride or (1,))
    buffer = io.BytesIO()
    _TorchLikePickler(buffer, legacy=False).dump({"w": tensor})
    return buffer.getvalue()


def _deflated_zeros(nbytes: int) -> tuple[bytes, int]:
    """A raw deflate stream of `nbytes` zeros and their CRC-32, built without holding
    the zeros: one compressed MiB (full flush: byte-aligned and self-contained)
    repeated, then an empty final block."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(_MIB)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(nbytes // _MIB):
        crc = zlib.crc32(zeros, crc)
    return block * (nbytes // _MIB) + b"\x03\x00", crc


def _write_zip(path, members) -> None:
    """A zip file written by hand, so that a member's header can say anything:
    members are (name, stored bytes, method, crc, declared uncompressed size)."""
    central, offset = [], 0
    with open(path, "wb") as file:
        for name, data, method, crc, size in members:
            encoded = name.encode()
            file.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 33, crc,
                                   len(data), size, len(encoded), 0) + encoded + data)
            central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 33,
                                       crc, len(data), size, len(encoded), 0, 0, 0, 0, 0,
                                       offset) + encoded)
            offset += 30 + len(encoded) + len(data)
        directory = b"".join(central)
        file.write(directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central),
                                           len(central), len(directory), offset, 0))


def _stored(name: str, data: bytes):
    return (name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """Weights files of about 1 MB each whose storage member inflates to 1 GiB."""
    folder = tmp_path_factory.mktemp("bombs")
    stream, crc = _deflated_zeros(_BOMB_BYTES)
    bomb = ("archive/data/0", stream, zipfile.ZIP_DEFLATED, crc, _BOMB_BYTES)
    lying = ("archive/data/0", stream, zipfile.ZIP_DEFLATED, zlib.crc32(bytes(16)), 16)
    layouts = {
        # The pickle wants 4 floats; the member declares 1 GiB.
        "small_storage": (_state_pickle(4), bomb),
        # The pickle wants 1 GiB of floats and the member declares it: consistent,
        # but a thousand-fold inflation no weights file has.
        "consistent": (_state_pickle(_BOMB_BYTES // 4), bomb),
        # The header says 16 bytes; the deflate stream holds 1 GiB.
        "lying_header": (_state_pickle(4), lying),
        # A storage of 2**40 floats: refused on the count alone.
        "huge_claim": (_state_pickle(1 << 40), bomb),
    }
    paths = {}
    for name, (pickled, member) in layouts.items():
        paths[name] = str(folder / f"{name}.pth")
        _write_zip(paths[name], [_stored("archive/data.pkl", pickled),
                                 _stored("archive/byteorder", b"little"), member])
    # A tiny storage with zero strides that claims a (2**20, 2**20) tensor.
    paths["zero_strides"] = str(folder / "zero_strides.pth")
    _write_zip(paths["zero_strides"], [
        _stored("archive/data.pkl", _state_pickle(1, (1 << 20, 1 << 20), (0, 0))),
        _stored("archive/data/0", np.ones(1, np.float32).tobytes())])
    # Legacy layout whose storage header claims 2**40 elements after 16 real bytes.
    legacy = folder / "legacy_claim.pth"
    write_arrays(legacy, {"w": np.ones(4, np.float32)}, legacy=True)
    data = legacy.read_bytes()
    header = struct.pack("<q", 4)
    cut = data.rindex(header)
    legacy.write_bytes(data[:cut] + struct.pack("<q", 1 << 40) + data[cut + 8:])
    paths["legacy_claim"] = str(legacy)
    return paths


def test_the_bombs_are_real(bombs):
    assert os.path.getsize(bombs["consistent"]) < 2 * _MIB
    with zipfile.ZipFile(bombs["consistent"]) as archive:
        info = archive.getinfo("archive/data/0")
        assert info.file_size == _BOMB_BYTES
        with archive.open(info) as member:  # a valid deflate stream of zeros
            assert member.read(4 * _MIB) == bytes(4 * _MIB)


_EXPECTED = {
    "small_storage": r"small_storage\.pth: zip member 'archive/data/0' declares 1073741824 "
                     r"bytes, but its storage needs only 16; refusing to inflate it",
    "consistent": r"consistent\.pth: zip member 'archive/data/0' inflates \d+ bytes to "
                  r"1073741824 \(more than 100-fold\); refusing a likely zip bomb",
    "lying_header": r"lying_header\.pth: zip member 'archive/data/0' holds \d+ compressed "
                    r"bytes for a declared 16 bytes; its header lies",
    "huge_claim": r"huge_claim\.pth: storage 'archive/data/0' brings the tensor data to "
                  r"4398046511104 bytes, more than the limit of 2147483648 bytes",
    "zero_strides": r"zero_strides\.pth: tensor 'w' brings the tensor data to 4398046511104 "
                    r"bytes, more than the limit",
    "legacy_claim": r"legacy_claim\.pth: truncated file, storage '0' has 16 of 4398046511104 "
                    r"bytes",
}

# Runs in a child whose address space is capped: a reader that inflated the bomb
# would die of MemoryError there instead of refusing the file.
_CHILD = """
import json, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from rs_hashing.encoders.torch_state_dict import load_torch_state_dict
outcomes = {}
for path in sys.argv[2:]:
    try:
        load_torch_state_dict(path)
        outcomes[path] = "read"
    except ValueError as e:
        outcomes[path] = "ValueError: " + str(e)
    except MemoryError:
        outcomes[path] = "MemoryError"
# VmHWM, not ru_maxrss: that one keeps the parent's peak across fork and exec.
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"outcomes": outcomes, "max_rss_kib": peak}))
"""


def test_bombs_are_refused_before_memory_grows(bombs):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    names = list(_EXPECTED)
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(512 * _MIB), *(bombs[name] for name in names)],
        cwd=testing.REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    for name in names:
        outcome = report["outcomes"][bombs[name]]
        assert outcome.startswith("ValueError: "), (name, outcome)
        assert re.search(_EXPECTED[name], outcome), (name, outcome)
    # numpy and the reader, never the bomb: well under the 1 GiB it inflates to.
    assert report["max_rss_kib"] < 150 * 1024, report["max_rss_kib"]


def test_limits_are_configurable(tmp_path, bombs):
    path = tmp_path / "w.pth"
    write_arrays(path, {"w": np.ones((64, 64), np.float32)})
    assert load_torch_state_dict(path, max_bytes=64 * 64 * 4)["w"].shape == (64, 64)
    with pytest.raises(ValueError, match=r"w\.pth: storage 'archive/data/0' brings .* 16384 "
                                         r"bytes, more than the limit of 16383 bytes"):
        load_torch_state_dict(path, max_bytes=64 * 64 * 4 - 1)
    with pytest.raises(ValueError, match="max_bytes=0 must be a positive number"):
        load_torch_state_dict(path, max_bytes=0)
    # A deflated (not torch-written) file of ordinary weights still reads.
    deflated = tmp_path / "deflated.pth"
    values = np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32)
    write_arrays(deflated, {"w": values})
    with zipfile.ZipFile(deflated) as source, \
            zipfile.ZipFile(tmp_path / "re.pth", "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    np.testing.assert_array_equal(load_torch_state_dict(tmp_path / "re.pth")["w"], values)


# ---------------------------------------------------------------------- caption files

def _karpathy_with(root, hostile_name):
    """A caption file of two good images (one in a subfolder) and a hostile name as its
    third item (written after, so that no image is made for it)."""
    items = [{"filename": "beach_1.jpg", "captions": ["sand"]},
             {"filename": "sub/forest_1.jpg", "captions": ["trees"]}]
    path = testing.write_karpathy(str(root), items)
    content = json.loads(open(path, encoding="utf-8").read())
    content["images"].append({"filename": hostile_name, "classname": "x",
                              "sentences": [{"raw": "anything"}]})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f)
    return path


@pytest.mark.parametrize("hostile_name, reason", [
    ("../secret_1.jpg", "it has a '..' component"),
    ("sub/../../secret_1.jpg", "it has a '..' component"),
    ("..\\secret_1.jpg", "it has a '..' component"),
    ("/etc/passwd", "it is an absolute path"),
    ("beach\x00_2.jpg", "it holds a NUL byte"),
])
def test_karpathy_names_cannot_leave_the_image_folder(tmp_path, hostile_name, reason):
    testing.write_image(str(tmp_path / "secret_1.jpg"))  # what the name reaches for
    path = _karpathy_with(tmp_path / "data", hostile_name)
    folder = os.path.join(str(tmp_path / "data"), "RSICD_images")
    expected = (f"{path}: images[2]: image {hostile_name!r} leaves the image folder {folder} "
                f"({reason}); image names must be relative paths inside it")
    with pytest.raises(DatasetError) as raised:
        loaders.load_karpathy(path)
    assert str(raised.value) == expected
    with pytest.raises(DatasetError, match="leaves the image folder"):
        loaders.load_karpathy(path, check_images=False)  # checked also without the files


def test_links_may_stay_inside_but_not_point_out(tmp_path):
    """The decision on symbolic links: an image may be a link to a file inside the
    image folder, the folder itself may be a link, but a link to a file outside is
    refused like '..'."""
    secret = tmp_path / "outside" / "secret_1.jpg"
    testing.write_image(str(secret))
    path = _karpathy_with(tmp_path / "data", "linked_1.jpg")
    images = tmp_path / "data" / "RSICD_images"
    os.symlink(secret, images / "linked_1.jpg")
    with pytest.raises(DatasetError, match=r"images\[2\]: image 'linked_1.jpg' leaves the image "
                                           r"folder .* \(it resolves through a symbolic link to "
                                           rf"{secret}\)"):
        loaders.load_karpathy(path)
    # A linked subfolder that points out is refused the same way.
    os.remove(images / "linked_1.jpg")
    os.symlink(secret.parent, images / "elsewhere")
    path = _karpathy_with(tmp_path / "data", "elsewhere/secret_1.jpg")
    with pytest.raises(DatasetError, match="resolves through a symbolic link"):
        loaders.load_karpathy(path)
    # Links that stay inside, and a linked image folder, are fine.
    os.remove(images / "elsewhere")
    os.symlink(images / "beach_1.jpg", images / "linked_1.jpg")
    path = _karpathy_with(tmp_path / "data", "linked_1.jpg")
    assert loaders.load_karpathy(path).filenames[2] == "linked_1.jpg"
    os.symlink(images, tmp_path / "alias")
    dataset = loaders.load_karpathy(path, image_dir=str(tmp_path / "alias"))
    assert dataset.filenames == ("beach_1.jpg", "sub/forest_1.jpg", "linked_1.jpg")


def test_csv_names_cannot_leave_the_image_folder(tmp_path):
    testing.write_image(str(tmp_path / "images" / "a_1.png"))
    testing.write_image(str(tmp_path / "a_2.png"))
    path = tmp_path / "captions.csv"
    path.write_text("image,caption,label\na_1.png,calm lake,water\n"
                    "../a_2.png,a lake,water\n../a_2.png,another,water\n")
    with pytest.raises(DatasetError) as raised:
        loaders.load_csv(str(path))
    assert str(raised.value) == (
        f"{path}, line 3: image '../a_2.png' leaves the image folder "
        f"{tmp_path / 'images'} (it has a '..' component); image names must be relative "
        "paths inside it")
    path.write_text(f"image,caption\n{tmp_path / 'a_2.png'},a lake\n")
    with pytest.raises(DatasetError, match=r"line 2: .* \(it is an absolute path\)"):
        loaders.load_csv(str(path))


# ---------------------------------------------------------------------- killed extraction

def _seeded_differently(seed: int) -> None:
    """Leaves the process in another global random state, as a new process would be
    (keras.utils.set_random_seed seeds Python, NumPy, TensorFlow and Keras)."""
    keras.utils.set_random_seed(seed)
    keras.layers.Dense(3).build((None, seed % 7 + 1))  # and some of it used


def _textured_dataset(root, n=5):
    items = [{"filename": f"{c}_{i}.jpg", "captions": [f"a {c} near water", f"the {c} is green"]}
             for c in ("beach", "forest") for i in range(n)]
    path = testing.write_karpathy(str(root), items)
    rng = np.random.default_rng(0)
    for item in items:
        testing.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            os.path.join(root, "RSICD_images", item["filename"]))
    return loaders.load_karpathy(path)


def test_random_encoders_are_the_same_whatever_the_global_seed():
    features = testing.tiny_config().features
    assert (features.image_encoder, features.image_weights, features.text_encoder) == \
        ("tiny_cnn", "none", "tiny_bert")
    images = np.random.default_rng(1).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    captions = ["a beach near water", "green forest"]
    outputs = []
    for global_seed in (1, 2):
        _seeded_differently(global_seed)
        encoders = FrozenEncoders(features)
        outputs.append((np.asarray(encoders.image(images)), encoders.text.encode(captions)))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    assert np.abs(outputs[0][0]).sum() > 0 and np.abs(outputs[0][1]).sum() > 0
    # 'default' weights of tiny_cnn are the same random encoder.
    default = testing.tiny_config(**{"features.image_weights": "default"}).features
    np.testing.assert_array_equal(np.asarray(FrozenEncoders(default).image(images)),
                                  outputs[0][0])


def test_other_random_image_encoders_are_seeded_and_leave_python_random_alone():
    features = testing.tiny_config(**{"features.image_encoder": "efficientnet_lite0",
                                      "features.image_size": 32}).features
    weights = []
    for global_seed in (3, 4):
        _seeded_differently(global_seed)
        state = random.getstate()
        weights.append([np.asarray(w) for w in FrozenEncoders(features).image.weights])
        assert random.getstate() == state  # the caller's stream is untouched
    assert len(weights[0]) > 10
    for first, second in zip(*weights):
        np.testing.assert_array_equal(first, second)


def test_killed_and_resumed_extraction_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    dataset = _textured_dataset(tmp_path / "data")
    config = testing.tiny_config(**{"features.encode_batch_size": 4})
    calls = []

    class SmallShards(FeatureExtractor):
        """Shards of 4 images; dies on the third when asked to."""
        die = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "shard_size": 4})

        def _image_shard(self, ds, start, stop):
            calls.append(start)
            if self.die and len(calls) == 3:
                raise KeyboardInterrupt("killed")
            return super()._image_shard(ds, start, stop)

    monkeypatch.setattr(extraction, "FeatureExtractor", SmallShards)
    store = str(tmp_path / "store")
    _seeded_differently(11)  # the first process
    SmallShards.die = True
    with pytest.raises(KeyboardInterrupt):
        extraction.extract_features(config, dataset, store, progress=False)
    shards = sorted(os.listdir(os.path.join(store, "shards")))
    assert shards[:2] == ["image_00000.npy", "image_00001.npy"]
    _seeded_differently(12)  # the process that resumes: new encoders
    SmallShards.die = False
    calls.clear()
    resumed = extraction.extract_features(config, dataset, store, progress=False)
    assert calls == [8]  # the two finished shards were reused
    _seeded_differently(13)  # an uninterrupted run elsewhere
    fresh = extraction.extract_features(config, dataset, str(tmp_path / "fresh"), progress=False)
    for name in ("image", "image_aug", "text", "text_aug", "caption_offsets", "labels"):
        assert np.asarray(getattr(resumed, name)).tobytes() == \
            np.asarray(getattr(fresh, name)).tobytes(), name
