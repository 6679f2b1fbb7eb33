"""Ground-station image hashing with a TFLite file: ai-edge-litert, numpy and Pillow.

This module must never import TensorFlow or Keras (a ground station installs only
`ai-edge-litert`, `numpy`, `pillow`, `rasterio` for GeoTIFFs and 16-bit PNGs and, for
exact JPEG pixels, `simplejpeg`: requirements-edge.txt); tests/edge/edge_encoder_test.py
checks that.

Preprocessing reproduces `features.image_pipeline` (the training features):

* Decoding. `tf.io.decode_image` decodes JPEGs with libjpeg-turbo's fast integer DCT
  (TensorFlow's default, `dct_method="INTEGER_FAST"`) and fancy chroma upsampling.
  Pillow always uses the accurate DCT, which moves pixels by up to ~15 levels and
  flips about 2% of the bits. `simplejpeg`, when installed, decodes with the fast DCT
  and gives TensorFlow's pixels exactly, so JPEGs go through it (`jpeg_decoder="auto"`);
  everything else (PNG, BMP, GIF, ...) goes through Pillow, which matches TensorFlow
  there. Grey images are expanded to RGB, alpha is dropped, EXIF orientation is
  ignored, all as `tf.io.decode_image(channels=3)` does. 16-bit PNGs and GeoTIFF/TIFF
  files are read with rasterio and pass through the run's radiometric contract
  (`rs_hashing.geo.raster_image`, the very code the training side uses).
* Resizing. The whole frame goes to S x S with Pillow's bilinear filter, which widens
  its support when shrinking exactly as `tf.image.resize(..., antialias=True)` does;
  each channel is resized as a 32-bit float image, so nothing is rounded to uint8 in
  between (pixels agree with TensorFlow's to about 1e-3).

`tflite_export` measures the bit agreement of this path with the Keras model.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import io
import json
import os
from typing import Iterator, Sequence

import numpy as np
from ai_edge_litert import schema_py_generated as litert_schema
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from rs_hashing.geo.radiometry import Radiometry
from rs_hashing.image_files import IMAGE_EXTENSIONS

OUTPUTS = ("code", "packed", "hash")
INPUT_NAME = "image"
JPEG_DECODERS = ("auto", "simplejpeg", "pillow")
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")


def _simplejpeg():
    """The simplejpeg module, or None where it is not installed."""
    try:
        return importlib.import_module("simplejpeg")
    except ImportError:
        return None


def jpeg_decoder_used(jpeg_decoder: str = "auto") -> str:
    """Which decoder `decode_image` uses for JPEGs: "simplejpeg" or "pillow".

    Raises:
        ValueError: an unknown decoder name.
        ImportError: "simplejpeg" was asked for and is not installed.
    """
    if jpeg_decoder not in JPEG_DECODERS:
        raise ValueError(f"jpeg_decoder={jpeg_decoder!r} is not one of {', '.join(JPEG_DECODERS)}")
    if jpeg_decoder == "pillow":
        return "pillow"
    if _simplejpeg() is not None:
        return "simplejpeg"
    if jpeg_decoder == "simplejpeg":
        raise ImportError("jpeg_decoder='simplejpeg' needs the package simplejpeg (pip install simplejpeg)")
    return "pillow"


def _needs_raster_reader(data: bytes) -> bool:
    """16-bit PNGs and TIFFs are read with rasterio through the radiometric contract."""
    return (data[:8] == _PNG_MAGIC and len(data) > 24 and data[24] == 16) or data[:4] in _TIFF_MAGICS


def decode_image(data: bytes, jpeg_decoder: str = "auto", name: str = "image",
                 radiometry: Radiometry | None = None) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3] (see the module docstring); 16-bit PNG and
    GeoTIFF/TIFF pass through the radiometric contract, exactly as in training.

    Raises:
        ValueError: the bytes are not a decodable image (the message names `name`).
    """
    if _needs_raster_reader(data):
        try:
            from rs_hashing.geo.raster_image import read_raster_image  # pylint: disable=import-outside-toplevel
        except ImportError as e:
            raise ValueError(f"{name}: 16-bit PNG and TIFF images need rasterio ({e})") from None
        return read_raster_image(data, radiometry, name=name)
    try:
        if data[:3] == _JPEG_MAGIC and jpeg_decoder_used(jpeg_decoder) == "simplejpeg":
            # Fast integer DCT and fancy upsampling: TensorFlow's default JPEG decode.
            return _simplejpeg().decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=False)
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from None


def resize_image(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 or float [H, W, 3] -> float32 [S, S, 3] in [0, 255], the whole frame."""
    channels = [Image.fromarray(np.ascontiguousarray(pixels[..., c], dtype=np.float32))
                .resize((image_size, image_size), Image.Resampling.BILINEAR) for c in range(3)]
    resized = np.stack([np.asarray(channel, dtype=np.float32) for channel in channels], axis=-1)
    return np.clip(resized, 0.0, 255.0)


def load_image(path: str, image_size: int, jpeg_decoder: str = "auto",
               radiometry: Radiometry | None = None) -> np.ndarray:
    """An image file -> float32 [S, S, 3] in [0, 255], as the training features saw it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a decodable image (names the file).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not an image file") from None
    return resize_image(decode_image(data, jpeg_decoder, name=path, radiometry=radiometry), image_size)


def operator_names(model_content: bytes) -> list[str]:
    """Sorted names of the operators a .tflite flatbuffer uses ("CUSTOM:<name>" for
    custom and Flex ops, which the pip runtimes cannot run)."""
    model = litert_schema.ModelT.InitFromPackedBuf(bytearray(model_content), 0)
    builtin_names = {value: name for name, value in vars(litert_schema.BuiltinOperator).items()
                     if not name.startswith("_")}
    names = set()
    for code in model.operatorCodes:
        if code.customCode is not None:
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
            names.add(f"CUSTOM:{custom}")
        else:
            # Old files keep small op codes in the deprecated field only.
            names.add(builtin_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN"))
    return sorted(names)


def exported_radiometry(model_path: str) -> Radiometry:
    """The radiometric contract recorded in the export report beside a .tflite file
    (`<stem>.json`, its run's `features`), or the default fixed contract without one."""
    report = os.path.splitext(model_path)[0] + ".json"
    try:
        with open(report, encoding="utf-8") as f:
            features = json.load(f).get("features") or {}
    except (OSError, ValueError):
        return Radiometry()
    if "range16_low" not in features:
        return Radiometry()
    return Radiometry(range16=(features["range16_low"], features["range16_high"]))


def find_images(paths: Sequence[str]) -> list[str]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(path, name) for name in os.listdir(path)
                            if name.lower().endswith(IMAGE_EXTENSIONS))
        else:
            found.append(path)
    return found


class EdgeEncoder:
    """Runs an image-hashing .tflite file (written by `tflite_export`) on image files.

    The model's signature takes `image`, float32 [N, S, S, 3] pixels in [0, 255], and
    returns `code` (int8 +-1 [N, K]), `packed` (uint8 [N, K/8]) and `hash` (float32).

    Args:
        model_path: the .tflite file.
        num_threads: interpreter threads (default: all CPUs).
        batch_size: images per interpreter call; images of the next batch are decoded
            in threads while the current one runs.
        jpeg_decoder: "auto" (simplejpeg where installed, else Pillow), "simplejpeg"
            or "pillow"; see the module docstring.
        radiometry: how 16-bit images become 8-bit input; default: the contract of the
            run the model was exported from, read from the report beside the model
            (`<stem>.json`), else the default fixed contract.

    Raises:
        FileNotFoundError: no such model file.
        ValueError: the file is not an image-hashing model (e.g. the text model).
    """

    def __init__(self, model_path: str, num_threads: int | None = None, batch_size: int = 16,
                 jpeg_decoder: str = "auto", radiometry: Radiometry | None = None):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"{model_path}: no such TFLite model file")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        self.jpeg_decoder = jpeg_decoder_used(jpeg_decoder)
        self.model_path = model_path
        self.radiometry = radiometry or exported_radiometry(model_path)
        self.batch_size = batch_size
        self.num_threads = num_threads or os.cpu_count() or 1
        self._interpreter = Interpreter(model_path=model_path, num_threads=self.num_threads)
        signatures = self._interpreter.get_signature_list()
        usable = [key for key, io in signatures.items()
                  if io["inputs"] == [INPUT_NAME] and set(OUTPUTS) <= set(io["outputs"])]
        if not usable:
            raise ValueError(
                f"{model_path}: not an image-hashing model; expected a signature with input "
                f"'{INPUT_NAME}' and outputs {', '.join(OUTPUTS)}, found {signatures}")
        self._runner = self._interpreter.get_signature_runner(usable[0])
        shape = self._runner.get_input_details()[INPUT_NAME]["shape_signature"]
        self.image_size = int(shape[1])
        self.bits = int(self._runner.get_output_details()["code"]["shape_signature"][-1])

    def encode_pixels(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """{code, packed, hash} for float pixels [N, S, S, 3] in [0, 255].

        Raises:
            ValueError: pixels of another shape (the message gives both shapes).
        """
        pixels = np.asarray(pixels, dtype=np.float32)
        expected = (self.image_size, self.image_size, 3)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(f"pixels must have shape [N, {', '.join(map(str, expected))}], "
                             f"got {list(pixels.shape)}")
        parts = {name: [] for name in OUTPUTS}
        for start in range(0, len(pixels), self.batch_size):
            result = self._runner(image=np.ascontiguousarray(pixels[start:start + self.batch_size]))
            for name in OUTPUTS:
                parts[name].append(np.array(result[name]))
        if not parts["code"]:
            return {"code": np.zeros((0, self.bits), np.int8),
                    "packed": np.zeros((0, self.bits // 8), np.uint8),
                    "hash": np.zeros((0, self.bits), np.float32)}
        return {name: np.concatenate(values) for name, values in parts.items()}

    def iter_files(self, paths: Sequence[str]) -> Iterator[tuple[str, dict | None, str | None]]:
        """Yields (path, outputs of that image, None) or (path, None, error) in order.

        An unreadable file does not stop the others; its error message names it.
        """
        batches = [list(paths[i:i + self.batch_size]) for i in range(0, len(paths), self.batch_size)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.num_threads) as pool:
            def submit(batch):
                return [pool.submit(load_image, path, self.image_size, self.jpeg_decoder, self.radiometry)
                        for path in batch]

            pending = submit(batches[0]) if batches else []
            for index, batch in enumerate(batches):
                loaded = pending
                # Pillow releases the GIL while decoding: the next batch loads while
                # this one runs through the interpreter.
                pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
                good, errors = [], {}
                for path, future in zip(batch, loaded):
                    try:
                        good.append((path, future.result()))
                    except (FileNotFoundError, ValueError) as e:
                        errors[path] = str(e)
                outputs = self.encode_pixels(np.stack([p for _, p in good])) if good else {}
                row = {path: i for i, (path, _) in enumerate(good)}
                for path in batch:
                    if path in errors:
                        yield path, None, errors[path]
                    else:
                        yield path, {name: outputs[name][row[path]] for name in OUTPUTS}, None

    def encode_files(self, paths: Sequence[str]) -> dict[str, np.ndarray]:
        """{code, packed, hash} for image files, in order.

        Raises:
            FileNotFoundError, ValueError: the first file that cannot be read.
        """
        rows = []
        for path, outputs, error in self.iter_files(paths):
            if error is not None:
                raise ValueError(error)
            rows.append(outputs)
        if not rows:
            return self.encode_pixels(np.zeros((0, self.image_size, self.image_size, 3), np.float32))
        return {name: np.stack([row[name] for row in rows]) for name in OUTPUTS}
