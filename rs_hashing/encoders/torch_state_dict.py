"""Reads PyTorch state-dict files (.pth / .pt) into NumPy arrays without torch.

Pretrained weights for some of our encoders ship only as PyTorch state dicts.
Installing torch (about a gigabyte) just to read a few megabytes of tensors is
not worth it, and `torch.load` on an untrusted file runs arbitrary pickle code.
This module parses the two on-disk layouts that `torch.save` has used:

* the zip layout (torch >= 1.6): an archive `<name>/data.pkl` holding the
  pickled object, and `<name>/data/<key>` files with the raw storage bytes;
* the legacy layout (torch < 1.6): five concatenated pickles (magic number,
  protocol version, system info, the object, the storage keys), followed by
  each storage as an int64 element count and its raw bytes.

The pickled object is read by an `Unpickler` that resolves only the handful of
globals a plain state dict needs (`collections.OrderedDict`, the tensor
rebuild functions and the typed storage classes). Any other global, such as
`os.system` or a model class pickled whole, is refused before it is created.
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

# `torch.save` writes this number as the first pickle of the legacy layout.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

# Typed storage classes as they appear in pickles: `torch.<Name>Storage`.
# bfloat16 has no NumPy dtype; its bytes are read as uint16 and widened to
# float32 after loading (see `_storage_array`).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("float64"),
    "FloatStorage": np.dtype("float32"),
    "HalfStorage": np.dtype("float16"),
    "BFloat16Storage": np.dtype("uint16"),
    "LongStorage": np.dtype("int64"),
    "IntStorage": np.dtype("int32"),
    "ShortStorage": np.dtype("int16"),
    "CharStorage": np.dtype("int8"),
    "ByteStorage": np.dtype("uint8"),
    "BoolStorage": np.dtype("bool"),
}


class _StorageType:
    """Stands in for a `torch.<Name>Storage` class during unpickling."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _StorageRef:
    """A storage named in the pickle; its bytes are attached after parsing."""

    def __init__(self, storage_type: _StorageType, key: str, numel: int):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel
        self.data: np.ndarray | None = None


class _StorageView:
    """A slice of a root storage (legacy layout only)."""

    def __init__(self, root: _StorageRef, offset: int, numel: int):
        self.root = root
        self.offset = offset
        self.numel = numel


class _TensorRef:
    """A tensor named in the pickle; materialised once storages are read."""

    def __init__(self, storage, offset: int, size: tuple, stride: tuple):
        self.storage = storage
        self.offset = offset
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Replaces `torch._utils._rebuild_tensor_v2`; arguments as torch writes them."""
    del requires_grad, backward_hooks, metadata  # Irrelevant for inference arrays.
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    """Replaces the older `torch._utils._rebuild_tensor`."""
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """Replaces `torch._utils._rebuild_parameter`: a Parameter is its tensor."""
    del requires_grad, backward_hooks
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain state-dict content."""

    def __init__(self, file: BinaryIO, path: str, legacy: bool):
        super().__init__(file)
        self._path = path
        self._legacy = legacy
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise ValueError(
            f"{self._path}: refusing to unpickle global '{module}.{name}'; only "
            "plain state dicts of tensors can be read without torch "
            "(save `model.state_dict()`, not the model object).")

    def persistent_load(self, pid: Any) -> Any:
        # Legacy: ('storage', type, root_key, location, numel, view_metadata);
        # zip: ('storage', type, key, location, numel).
        expected_len = 6 if self._legacy else 5
        if (not isinstance(pid, tuple) or len(pid) != expected_len
                or pid[0] != "storage"):
            raise ValueError(f"{self._path}: unsupported persistent id {pid!r}.")
        _, storage_type, key, _, numel = pid[:5]
        view = pid[5] if self._legacy else None
        if not isinstance(storage_type, _StorageType):
            raise ValueError(
                f"{self._path}: storage {key!r} has unsupported type {storage_type!r}.")
        key = str(key)
        root = self.storages.setdefault(key, _StorageRef(storage_type, key, int(numel)))
        if view is None:
            return root
        _, view_offset, view_numel = view
        return _StorageView(root, int(view_offset), int(view_numel))


def _read_pickle(unpickler: _RestrictedUnpickler, path: str, what: str) -> Any:
    """Runs `unpickler` once, turning any parse failure into a clear error."""
    try:
        return unpickler.load()
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(
            f"{path}: corrupt or truncated PyTorch file, cannot read the {what}: "
            f"{type(err).__name__}: {err}") from err


def _load_legacy(file: BinaryIO, path: str) -> Any:
    """Parses the pre-1.6 layout: five pickles, then raw storages."""
    try:
        magic = _RestrictedUnpickler(file, path, legacy=True).load()
    except Exception as err:
        raise ValueError(
            f"{path}: not a PyTorch file (neither a zip archive nor a legacy "
            f"torch.save pickle): {type(err).__name__}: {err}") from err
    if magic != _LEGACY_MAGIC_NUMBER:
        raise ValueError(
            f"{path}: not a PyTorch file (neither a zip archive nor the legacy "
            "format's magic number).")
    version = _read_pickle(_RestrictedUnpickler(file, path, True), path, "protocol version")
    if version != _LEGACY_PROTOCOL_VERSION:
        raise ValueError(f"{path}: unsupported legacy protocol version {version!r}.")
    sys_info = _read_pickle(_RestrictedUnpickler(file, path, True), path, "system info")
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
        raise ValueError(f"{path}: only little-endian PyTorch files are supported.")
    unpickler = _RestrictedUnpickler(file, path, legacy=True)
    obj = _read_pickle(unpickler, path, "state dict")
    storage_keys = _read_pickle(_RestrictedUnpickler(file, path, True), path, "storage keys")
    if not isinstance(storage_keys, list):
        raise ValueError(f"{path}: corrupt PyTorch file, storage keys are not a list.")
    # Storages follow in the order of `storage_keys`, each as an int64 element
    # count and then its bytes.
    for key in storage_keys:
        ref = unpickler.storages.get(str(key))
        if ref is None:
            raise ValueError(f"{path}: storage {key!r} is listed but never used.")
        header = file.read(8)
        if len(header) != 8:
            raise ValueError(f"{path}: truncated file, storage {key!r} is missing.")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * ref.storage_type.dtype.itemsize
        raw = file.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(
                f"{path}: truncated file, storage {key!r} has {len(raw)} of {nbytes} bytes.")
        ref.numel = numel
        ref.data = np.frombuffer(raw, dtype=ref.storage_type.dtype.newbyteorder("<"))
    return obj


def _load_zip(path: str) -> Any:
    """Parses the zip layout written by torch >= 1.6."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ValueError(
                    f"{path}: zip archive is not a PyTorch file (expected one "
                    f"'data.pkl', found {len(pickles)}).")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder_name = prefix + "byteorder"
            if byteorder_name in names and archive.read(byteorder_name).strip() != b"little":
                raise ValueError(f"{path}: big-endian PyTorch files are not supported.")
            unpickler = _RestrictedUnpickler(
                io.BytesIO(archive.read(pickles[0])), path, legacy=False)
            obj = _read_pickle(unpickler, path, "state dict")
            for key, ref in unpickler.storages.items():
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise ValueError(f"{path}: storage file '{member}' is missing.")
                raw = archive.read(member)
                expected = ref.numel * ref.storage_type.dtype.itemsize
                if len(raw) < expected:
                    raise ValueError(
                        f"{path}: storage '{member}' has {len(raw)} of {expected} bytes.")
                ref.data = np.frombuffer(
                    raw[:expected], dtype=ref.storage_type.dtype.newbyteorder("<"))
    except ValueError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, KeyError, OSError) as err:
        raise ValueError(f"{path}: corrupt PyTorch zip file: {err}") from err
    except Exception as err:  # zlib and CRC errors have no common base class.
        raise ValueError(
            f"{path}: corrupt PyTorch zip file: {type(err).__name__}: {err}") from err
    return obj


def _tensor_array(ref: _TensorRef, path: str, name: str) -> np.ndarray:
    """Turns a tensor reference into a contiguous array, honouring its strides."""
    storage, base = ref.storage, 0
    if isinstance(storage, _StorageView):
        storage, base = storage.root, storage.offset
    flat = storage.data
    if flat is None:
        raise ValueError(f"{path}: tensor '{name}' points to a storage that was not read.")
    offset = base + int(ref.offset)
    # The last element touched must lie inside the storage; as_strided does not
    # check bounds, so a corrupt header would otherwise read foreign memory.
    if any(s == 0 for s in ref.size):
        last = offset - 1
    else:
        last = offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride))
    if offset < 0 or last >= flat.size or any(st < 0 for st in ref.stride):
        raise ValueError(
            f"{path}: tensor '{name}' (shape {ref.size}, stride {ref.stride}, offset "
            f"{offset}) does not fit its storage of {flat.size} elements.")
    itemsize = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=ref.size, strides=[st * itemsize for st in ref.stride],
        writeable=False)
    # Copy: the result owns C-contiguous memory (torch files converted from
    # TensorFlow often keep transposed, non-contiguous strides).
    array = np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")
    if storage.storage_type.name == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict into NumPy arrays, without importing torch.

    Args:
        path: a `.pth`/`.pt` file written by `torch.save(model.state_dict())`,
            in either the zip layout (torch >= 1.6) or the legacy layout.

    Returns:
        An insertion-ordered dict from parameter name to a C-contiguous array
        with the tensor's shape and dtype (bfloat16 is widened to float32).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable PyTorch file, is truncated, or
            pickles anything besides a flat mapping of names to tensors (the
            message names the file and the offending global or key).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PyTorch state dict not found: {path}")
    if zipfile.is_zipfile(path):
        obj = _load_zip(path)
    else:
        with open(path, "rb") as file:
            obj = _load_legacy(file, path)
    if not isinstance(obj, dict):
        raise ValueError(
            f"{path}: expected a state dict (a mapping of names to tensors), got "
            f"{type(obj).__name__}.")
    arrays = {}
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; "
                "only flat state dicts are supported.")
        arrays[str(name)] = _tensor_array(value, path, str(name))
    return arrays
