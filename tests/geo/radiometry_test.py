import subprocess
import sys

import numpy as np
import pytest

from rs_hashing.geo.radiometry import Radiometry


def _fixed(low, high):
    return Radiometry(low=(low,) * 3, high=(high,) * 3)


def _as_pixels(values, dtype):
    """Any number of values -> [1, N, 3], the same values in each band."""
    return np.repeat(np.asarray(values, dtype)[None, :, None], 3, axis=2)


def test_default_maps_reflectance_0_3_to_255_and_clips_both_ends():
    contract = Radiometry()
    values = [0, 1200, 2999, 3000, 3001, 65535]
    # 1200 * 255 / 3000 = 102; 2999 * 0.085 = 254.915 -> 255; past 3000 clipped.
    assert contract.apply(_as_pixels(values, np.uint16))[0, :, 0].tolist() == [0, 102, 255, 255, 255, 255]
    assert contract.resolved_for_dtype("uint16").high == (3000.0,) * 3
    assert contract.resolved_for_dtype(np.uint8).low == (0.0,) * 3


def test_rounding_halves_go_to_even_and_low_offset_clips_below():
    # Scale 255 / 510 = 0.5 exactly: odd values land on .5 boundaries.
    values = [1, 3, 5, 7, 509, 510, 511, 65535]
    assert _fixed(0, 510).apply(_as_pixels(values, np.uint16))[0, :, 0].tolist() == [0, 2, 2, 4, 254, 255, 255, 255]
    # low 100: below it clips to 0; 101 -> 0.5 -> 0, 103 -> 1.5 -> 2, 105 -> 2.5 -> 2.
    values = [0, 99, 100, 101, 103, 105, 610, 611]
    assert _fixed(100, 610).apply(_as_pixels(values, np.uint16))[0, :, 0].tolist() == [0, 0, 0, 0, 2, 2, 255, 255]


def test_uint8_sources_pass_unchanged():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = Radiometry().apply(pixels)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, pixels)
    # The 16-bit range does not touch 8-bit sources.
    np.testing.assert_array_equal(Radiometry(range16=(0, 10)).apply(pixels), pixels)


def test_bands_use_their_own_range():
    contract = Radiometry(mode="percentile", low=(0, 100, 1000), high=(510, 610, 1510))
    pixels = np.array([[[510, 610, 1510], [0, 99, 999], [3, 103, 1005]]], np.uint16)
    assert contract.apply(pixels).tolist() == [[[255, 255, 255], [0, 0, 0], [2, 2, 2]]]


@pytest.mark.parametrize("low, high", [
    ((0, 0, 0), (3000, 3000, 3000)),
    ((0, 0, 0), (510, 510, 510)),
    ((100, 100, 100), (610, 610, 610)),
    ((84.94, 97.0, 108.0), (4906.0, 4895.0, 4917.0)),  # Percentile-like, not integers.
    ((0, 0, 0), (10000, 10000, 10000)),
    ((1, 2, 3), (7, 11, 13)),  # Steep: a rounding boundary every few values.
])
def test_numpy_and_tensorflow_give_the_same_bytes_on_every_uint16_value(low, high):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    contract = Radiometry(mode="percentile", low=low, high=high)
    every_value = np.arange(65536, dtype=np.uint16)
    rng = np.random.default_rng(0)
    pixels = np.stack([every_value, rng.permutation(every_value), every_value[::-1]], axis=-1).reshape(256, 256, 3)
    expected = contract.apply(pixels)
    np.testing.assert_array_equal(contract.tf_apply(tf.constant(pixels)).numpy(), expected)
    for shape in ([None, None, 3], None):  # A graph input of known channels, and of unknown rank.
        graph = tf.function(contract.tf_apply, input_signature=[tf.TensorSpec(shape, tf.uint16)])
        np.testing.assert_array_equal(graph(tf.constant(pixels)).numpy(), expected)
    # Both ends are reached and clipped (a check that the test exercises clipping).
    assert expected.min() == 0 and expected.max() == 255


def test_tensorflow_uint8_identity_and_fixed_resolution_from_the_tensor_dtype():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    pixels = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3) % 256
    pixels = pixels.astype(np.uint8)
    np.testing.assert_array_equal(Radiometry().tf_apply(tf.constant(pixels)).numpy(), pixels)
    sixteen = _as_pixels([0, 1200, 3000, 65535], np.uint16)
    assert Radiometry().tf_apply(tf.constant(sixteen)).numpy()[0, :, 0].tolist() == [0, 102, 255, 255]


def test_percentiles_of_valid_pixels_only():
    # 10000 valid pixels per band with known values, and 5000 nodata (0) pixels.
    values = np.random.default_rng(1).permutation(10000)
    valid_pixels = np.stack([values, 2 * values, values + 1000], axis=-1).astype(np.uint16)
    pixels = np.concatenate([valid_pixels, np.zeros((5000, 3), np.uint16)]).reshape(150, 100, 3)
    valid = np.concatenate([np.ones(10000, bool), np.zeros(5000, bool)]).reshape(150, 100)
    resolved = Radiometry(mode="percentile").resolved_from_sample(pixels, valid)
    # numpy.percentile of 0..9999 (linear): p2 = 0.02 * 9999 = 199.98, p98 = 9799.02.
    assert resolved.low == tuple(float(np.float32(value)) for value in (199.98, 399.96, 1199.98))
    assert resolved.high == tuple(float(np.float32(value)) for value in (9799.02, 19598.04, 10799.02))
    # With the nodata pixels counted, p2 would be 0: they must be left out.
    assert min(resolved.low) > 0
    with pytest.raises(ValueError, match="no valid"):
        Radiometry(mode="percentile").resolved_from_sample(pixels, np.zeros_like(valid))


def test_constant_band_gets_a_unit_range():
    resolved = Radiometry(mode="percentile").resolved_from_sample(np.full((4, 4, 3), 700, np.uint16),
                                                                  np.ones((4, 4), bool))
    assert resolved.low == (700.0,) * 3 and resolved.high == (701.0,) * 3
    assert resolved.apply(np.full((1, 1, 3), 701, np.uint16)).tolist() == [[[255, 255, 255]]]


def test_record_round_trip_and_unknown_keys():
    contract = Radiometry(mode="percentile", percentiles=(1, 99), low=(84.94, 97, 108), high=(4906, 4895, 4917))
    record = contract.to_dict()
    assert record["low"] == [float(np.float32(84.94)), 97.0, 108.0] and record["mode"] == "percentile"
    assert Radiometry.from_dict(record) == contract
    assert Radiometry.from_dict(Radiometry().to_dict()) == Radiometry()
    with pytest.raises(ValueError, match=r"unknown keys \['gamma'\]"):
        Radiometry.from_dict({**record, "gamma": 2.2})


def test_bad_contracts_and_inputs_are_refused():
    with pytest.raises(ValueError, match="mode must be one of"):
        Radiometry(mode="histogram")
    with pytest.raises(ValueError, match="range16"):
        Radiometry(range16=(3000, 0))
    with pytest.raises(ValueError, match="percentiles"):
        Radiometry(percentiles=(98, 2))
    with pytest.raises(ValueError, match="resolved from a scene"):
        Radiometry(mode="percentile").apply(np.zeros((2, 2, 3), np.uint16))
    with pytest.raises(ValueError, match="uint8.*float32"):
        Radiometry().apply(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 2, 4\)"):
        Radiometry().apply(np.zeros((2, 2, 4), np.uint16))


def test_module_imports_without_tensorflow():
    code = ("import sys; import rs_hashing.geo.radiometry; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
