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

Sizes are checked before memory is spent on them, so that a small hostile file
cannot make the reader allocate gigabytes (a zip bomb, or a header that claims
a huge storage):

* the storages' byte counts (element count x element size, from the pickle)
  and the arrays returned together stay within `max_bytes` (2 GiB by default);
* a zip member holding a storage must declare (`ZipInfo.file_size`) exactly the
  bytes its storage needs, may not inflate more than `max_inflation` times its
  compressed size (torch itself stores members uncompressed; beyond 1 MiB,
  weights that deflate 100-fold are a bomb, not a model), and may not hold more
  compressed bytes than its declared size can explain (a lying header);
* members are read in bounded chunks into an array of the checked size, never
  inflated whole, and `data.pkl` is read only up to `MAX_PICKLE_BYTES`;
* a legacy storage may not claim more bytes than the rest of the file holds.
"""

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB: storages (and, apart, arrays) of one file
DEFAULT_MAX_INFLATION = 100.0  # deflated storage members: uncompressed / compressed
MAX_PICKLE_BYTES = 64 << 20  # data.pkl of a real state dict is kilobytes
_INFLATION_ALLOWANCE = 1 << 20  # small members (all-zero biases) may compress better
_READ_CHUNK = 16 << 20

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


def _load_legacy(file: BinaryIO, path: str, max_bytes: int) -> Any:
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
    file_size = os.fstat(file.fileno()).st_size
    total = 0
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
        left = file_size - file.tell()
        if numel < 0 or nbytes > left:
            # Checked before reading: a claimed size is never allocated.
            raise ValueError(
                f"{path}: truncated file, storage {key!r} has {max(left, 0)} of {nbytes} "
                "bytes.")
        total += nbytes
        _check_total(path, total, max_bytes, f"storage {key!r}")
        ref.numel = numel
        ref.data = _read_exactly(file, nbytes, ref.storage_type.dtype, path, f"storage {key!r}")
    return obj


def _check_total(path: str, total: int, max_bytes: int, what: str) -> None:
    if total > max_bytes:
        raise ValueError(
            f"{path}: {what} brings the tensor data to {total} bytes, more than the limit of "
            f"{max_bytes} bytes (max_bytes); refusing to read it (a hostile or corrupt file, "
            "or pass a larger max_bytes for a model this big).")


def _read_exactly(stream: BinaryIO, nbytes: int, dtype: np.dtype, path: str,
                  what: str) -> np.ndarray:
    """`nbytes` from `stream` into a new array, in bounded chunks (no second copy)."""
    buffer = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buffer)
    done = 0
    while done < nbytes:
        count = stream.readinto(view[done:min(nbytes, done + _READ_CHUNK)])
        if not count:
            raise ValueError(f"{path}: truncated file, {what} has {done} of {nbytes} bytes.")
        done += count
    return buffer.view(dtype.newbyteorder("<"))


def _check_member(path: str, info: zipfile.ZipInfo, needed: int | None,
                  max_inflation: float | None) -> None:
    """Refuses a member whose header sizes do not fit what it should hold, before a
    byte of it is inflated. `needed`: the exact bytes of its storage, or None for a
    member that is only bounded by `MAX_PICKLE_BYTES`."""
    member, size, packed = info.filename, info.file_size, info.compress_size
    if needed is None and size > MAX_PICKLE_BYTES:
        raise ValueError(
            f"{path}: zip member '{member}' declares {size} bytes, more than the "
            f"{MAX_PICKLE_BYTES} a state dict's pickle may have; refusing to inflate it.")
    if needed is not None and size > needed:
        raise ValueError(
            f"{path}: zip member '{member}' declares {size} bytes, but its storage needs "
            f"only {needed}; refusing to inflate it (a zip bomb or a corrupt file).")
    if needed is not None and size < needed:
        raise ValueError(f"{path}: storage '{member}' has {size} of {needed} bytes.")
    if info.compress_type == zipfile.ZIP_STORED:
        return
    if (needed is not None and max_inflation is not None and size > _INFLATION_ALLOWANCE
            and size > max_inflation * packed):
        raise ValueError(
            f"{path}: zip member '{member}' inflates {packed} bytes to {size} (more than "
            f"{max_inflation:g}-fold); refusing a likely zip bomb (torch stores weights "
            "uncompressed; pass a larger max_inflation to read it anyway).")
    # Every compressor stores incompressible data with a small overhead; more
    # compressed bytes than that means the declared size is a lie.
    if packed > 2 * size + 4096:
        raise ValueError(
            f"{path}: zip member '{member}' holds {packed} compressed bytes for a declared "
            f"{size} bytes; its header lies about its size, refusing it.")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dtype: np.dtype,
                 path: str) -> np.ndarray:
    """A checked member's declared bytes, streamed; a stream that ends early or
    fails its CRC is reported with the member's name."""
    try:
        with archive.open(info) as stream:
            return _read_exactly(stream, info.file_size, dtype, path,
                                 f"zip member '{info.filename}'")
    except ValueError:
        raise
    except Exception as err:  # zlib and CRC errors have no common base class.
        raise ValueError(
            f"{path}: corrupt PyTorch zip file, member '{info.filename}': "
            f"{type(err).__name__}: {err}") from err


def _load_zip(path: str, max_bytes: int, max_inflation: float | None) -> Any:
    """Parses the zip layout written by torch >= 1.6."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            pickles = [n for n in infos if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ValueError(
                    f"{path}: zip archive is not a PyTorch file (expected one "
                    f"'data.pkl', found {len(pickles)}).")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = infos.get(prefix + "byteorder")
            if byteorder is not None:
                if byteorder.file_size > 64:
                    raise ValueError(f"{path}: zip member '{byteorder.filename}' declares "
                                     f"{byteorder.file_size} bytes; a byte order is a word.")
                order = bytes(_read_member(archive, byteorder, np.dtype("uint8"), path))
                if order.strip() != b"little":
                    raise ValueError(f"{path}: big-endian PyTorch files are not supported.")
            pickle_info = infos[pickles[0]]
            _check_member(path, pickle_info, None, max_inflation)
            pickled = _read_member(archive, pickle_info, np.dtype("uint8"), path)
            unpickler = _RestrictedUnpickler(io.BytesIO(pickled.tobytes()), path, legacy=False)
            obj = _read_pickle(unpickler, path, "state dict")
            # All sizes are checked before any storage is read.
            total = 0
            for key, ref in unpickler.storages.items():
                member = f"{prefix}data/{key}"
                if member not in infos:
                    raise ValueError(f"{path}: storage file '{member}' is missing.")
                if ref.numel < 0:
                    raise ValueError(f"{path}: storage '{member}' has {ref.numel} elements.")
                needed = ref.numel * ref.storage_type.dtype.itemsize
                total += needed
                _check_total(path, total, max_bytes, f"storage '{member}'")
                _check_member(path, infos[member], needed, max_inflation)
            for key, ref in unpickler.storages.items():
                ref.data = _read_member(archive, infos[f"{prefix}data/{key}"],
                                        ref.storage_type.dtype, path)
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
    if (offset < 0 or last >= flat.size or any(st < 0 for st in ref.stride)
            or any(n < 0 for n in ref.size) or len(ref.size) != len(ref.stride)):
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


def load_torch_state_dict(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES,
                          max_inflation: float | None = DEFAULT_MAX_INFLATION
                          ) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict into NumPy arrays, without importing torch.

    Args:
        path: a `.pth`/`.pt` file written by `torch.save(model.state_dict())`,
            in either the zip layout (torch >= 1.6) or the legacy layout.
        max_bytes: the most bytes of tensor data to read: the storages together,
            and apart from them the arrays returned together (2 GiB by default,
            ample for the encoders here). Checked before anything is allocated.
        max_inflation: the most a deflated storage member of a zip file may
            inflate (uncompressed / compressed size; members under 1 MiB are
            exempt); None: no limit.

    Returns:
        An insertion-ordered dict from parameter name to a C-contiguous array
        with the tensor's shape and dtype (bfloat16 is widened to float32).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable PyTorch file, is truncated,
            pickles anything besides a flat mapping of names to tensors, or
            needs more memory than the limits allow (a zip bomb, a lying
            header); the message names the file and the offending global, key
            or zip member.
    """
    path = os.fspath(path)
    for name, value in (("max_bytes", max_bytes), ("max_inflation", max_inflation)):
        if value is None and name == "max_inflation":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}={value!r} must be a positive number.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PyTorch state dict not found: {path}")
    if zipfile.is_zipfile(path):
        obj = _load_zip(path, max_bytes, max_inflation)
    else:
        with open(path, "rb") as file:
            obj = _load_legacy(file, path, max_bytes)
    if not isinstance(obj, dict):
        raise ValueError(
            f"{path}: expected a state dict (a mapping of names to tensors), got "
            f"{type(obj).__name__}.")
    arrays, total = {}, 0
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor; "
                "only flat state dicts are supported.")
        # Strides may repeat elements (stride 0), so a tiny storage can claim a
        # huge tensor: its size is checked before it is copied out.
        storage = value.storage.root if isinstance(value.storage, _StorageView) else value.storage
        itemsize = 4 if storage.storage_type.name == "BFloat16Storage" else \
            storage.storage_type.dtype.itemsize
        total += math.prod(max(n, 0) for n in value.size) * itemsize
        _check_total(path, total, max_bytes, f"tensor '{name}'")
        arrays[str(name)] = _tensor_array(value, path, str(name))
    return arrays
