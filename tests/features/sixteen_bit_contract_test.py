"""The same 16-bit pixels give the same code through training-time preprocessing, the
SavedModel and the ground-station runtime: one radiometric contract everywhere."""

import numpy as np
import pytest
import rasterio
import tensorflow as tf

from rs_hashing.edge.edge_encoder import EdgeEncoder
from rs_hashing.export import serving_export, tflite_export
from rs_hashing.features.image_pipeline import load_image, load_pixels
from rs_hashing.geo.radiometry import Radiometry
from tests import tiny_run


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """uint16 reflectance-like pixels (some above the 3000 that maps to 255) as a 16-bit
    PNG and a 3-band GeoTIFF, plus a 16-bit grey PNG."""
    root = tmp_path_factory.mktemp("sixteen")
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 4200, size=(9, 11, 3)).astype(np.float32)
    pixels = tf.cast(tf.image.resize(smooth[None], (37, 45), method="bicubic")[0], tf.float32).numpy()
    pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
    png = root / "scene16.png"
    png.write_bytes(tf.io.encode_png(pixels).numpy())
    grey_png = root / "grey16.png"
    grey_png.write_bytes(tf.io.encode_png(pixels[..., :1]).numpy())
    tif = root / "scene16.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=45, height=37, count=3, dtype="uint16",
                       crs="EPSG:32618", transform=rasterio.Affine(10, 0, 435730, 0, -10, 4179460)) as out:
        out.write(np.moveaxis(pixels, -1, 0))
    return {"pixels": pixels, "png": str(png), "grey_png": str(grey_png), "tif": str(tif)}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_run.tiny_model(str(tmp_path_factory.mktemp("run")))


def test_files_are_read_through_the_contract(scene):
    expected = Radiometry().apply(scene["pixels"])
    assert expected.max() == 255 and (scene["pixels"] > 3000).any()  # clipping is exercised
    for key in ("png", "tif"):
        np.testing.assert_array_equal(load_pixels(tf.constant(scene[key])).numpy(), expected)
    grey = Radiometry().apply(np.repeat(scene["pixels"][..., :1], 3, axis=-1))
    np.testing.assert_array_equal(load_pixels(tf.constant(scene["grey_png"])).numpy(), grey)


def test_training_savedmodel_and_edge_give_the_same_codes(scene, model, tmp_path):
    reference = model.encode_images([scene["pixels"]]).codes  # uint16 pixels, in memory
    # Training-time preprocessing: the file pipeline that feature extraction uses.
    from_files = model.encode_images([scene["png"], scene["tif"]]).codes
    np.testing.assert_array_equal(from_files, np.repeat(reference, 2, axis=0))
    resized = load_image(tf.constant(scene["tif"]), model.image_size).numpy()
    for key in ("tif", "png"):  # bytes (the export's measurement path) as files
        np.testing.assert_array_equal(model.preprocess_image_bytes(open(scene[key], "rb").read()), resized)
    np.testing.assert_array_equal(
        np.where(model.image_hash_from_pixels(resized[None]) >= 0, 1, -1), reference)
    # The SavedModel's encode_image on the 16-bit PNG's bytes.
    path = serving_export.export_savedmodel(model, str(tmp_path / "serving"), warmup=False)
    signature = tf.saved_model.load(path).signatures["encode_image"]
    served = signature(image_bytes=tf.constant([open(scene["png"], "rb").read()]))["code"].numpy()
    np.testing.assert_array_equal(served, reference)
    # The ground station: the TFLite file, its report (the run's contract) and the files.
    tflite = str(tmp_path / "edge" / "codes.tflite")
    tflite_export.export_tflite(model, tflite, "fp32", text=False)
    edge = EdgeEncoder(tflite)
    assert edge.radiometry.range16 == (model.config.features.range16_low, model.config.features.range16_high)
    edge_codes = edge.encode_files([scene["png"], scene["tif"]])["code"]
    agreement = float(np.mean(edge_codes == np.repeat(reference, 2, axis=0)))
    assert agreement == 1.0, agreement


def test_the_run_range_reaches_every_path(scene, tmp_path):
    """A run trained with another 16-bit range encodes with that range everywhere."""
    from rs_hashing import config as config_lib  # pylint: disable=import-outside-toplevel
    from rs_hashing.hashing_model import HashingModel  # pylint: disable=import-outside-toplevel

    run = tiny_run.make_tiny_run(str(tmp_path / "run"), saved_encoders=True)
    config = config_lib.apply_overrides(config_lib.load_config(run), {"range16_high": 1500.0})
    config_lib.save_config(config, run)
    model = HashingModel.from_run(run)
    assert model.radiometry.range16 == (0.0, 1500.0)
    expected = Radiometry(range16=(0.0, 1500.0)).apply(scene["pixels"])
    np.testing.assert_array_equal(model.encode_images([scene["png"]]).codes,
                                  model.encode_images([expected]).codes)
