"""The one sign rule and byte packing, on hand-made values."""

import numpy as np
import tensorflow as tf

from rs_hashing import codes as codes_lib


def test_binarize_numpy_maps_zero_to_plus_one():
    out = codes_lib.binarize(np.array([[0.0, -0.1, 0.2, -0.0]]))
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, [[1, -1, 1, 1]])


def test_binarize_tensor_stays_a_tensor_of_its_dtype():
    out = codes_lib.binarize(tf.constant([[0.0, -0.5, 3.0]]))
    assert isinstance(out, tf.Tensor) and out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), [[1.0, -1.0, 1.0]])


def test_pack_most_significant_bit_first():
    codes = np.array([[1, -1, 1, -1, 1, -1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1]], np.int8)
    np.testing.assert_array_equal(codes_lib.pack(codes), [[0xAB, 0x0F]])


def test_codes_from_hash():
    codes = codes_lib.Codes.from_hash([[0.3, -0.2, 0.0, -1.0, 0.1, 0.1, -0.1, -0.1]])
    assert len(codes) == 1 and codes.bits == 8
    np.testing.assert_array_equal(codes.codes, [[1, -1, 1, -1, 1, 1, -1, -1]])
    assert codes.hex() == ["ac"]
