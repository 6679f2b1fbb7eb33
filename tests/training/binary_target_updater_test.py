"""Tests for rs_hashing.training.binary_target_updater and the table update it triggers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel
from rs_hashing.training.binary_target_updater import BinaryTargetUpdater

FEATURES, HIDDEN, BITS, NUM_TRAIN = 12, 16, 8, 8


def make_model(**overrides) -> CrossModalHashingModel:
    kwargs = dict(image_dim=FEATURES, text_dim=FEATURES, bits=BITS, hidden_dim=HIDDEN,
                  num_train=NUM_TRAIN, seed=0)
    kwargs.update(overrides)
    return CrossModalHashingModel(**kwargs)


def training_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {key: rng.normal(size=(NUM_TRAIN, FEATURES)).astype("float32")
              for key in ("image", "image_aug", "text", "text_aug")}
    arrays["index"] = np.arange(NUM_TRAIN, dtype="int32")
    return arrays


def expected_targets(model, arrays, variant="as_intended") -> np.ndarray:
    """sign(mean of the four views' inference-mode codes), sign(0) = +1, in numpy."""
    text_aug = arrays["text"] if variant == "as_coded" else arrays["text_aug"]
    views = [model.image_head(arrays["image"], training=False),
             model.image_head(arrays["image_aug"], training=False),
             model.text_head(arrays["text"], training=False),
             model.text_head(text_aug, training=False)]
    mean = np.mean([np.asarray(v) for v in views], axis=0)
    return np.where(mean >= 0, 1.0, -1.0)


def test_callback_sets_table_to_sign_of_mean_of_four_views_each_epoch():
    arrays = training_arrays()
    model = make_model()
    model.compile(hash_optimizer=keras.optimizers.Adam(1e-2))
    dataset = tf.data.Dataset.from_tensor_slices(arrays).shuffle(NUM_TRAIN, seed=0).batch(4)
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((np.array(self.model.binary_targets), expected_targets(self.model, arrays)))

    initial = np.array(model.binary_targets)
    model.fit(dataset, epochs=2, verbose=0, callbacks=[BinaryTargetUpdater(dataset), Recorder()])
    for table, expected in seen:
        np.testing.assert_array_equal(table, expected)
    assert not np.array_equal(seen[0][0], initial)


def test_update_from_arrays_subset_keeps_other_rows():
    arrays = training_arrays()
    model = make_model(variant="as_coded")
    before = np.array(model.binary_targets)
    subset = {key: value[[5, 2]] for key, value in arrays.items()}
    table = model.update_binary_targets(subset)
    expected = expected_targets(model, arrays, variant="as_coded")
    np.testing.assert_array_equal(table[[5, 2]], expected[[5, 2]])
    others = [i for i in range(NUM_TRAIN) if i not in (2, 5)]
    np.testing.assert_array_equal(table[others], before[others])
    np.testing.assert_array_equal(np.asarray(model.binary_targets), table)


def test_update_without_index_needs_every_item():
    arrays = training_arrays()
    model = make_model()
    no_index = {key: value for key, value in arrays.items() if key != "index"}
    np.testing.assert_array_equal(model.update_binary_targets(no_index), expected_targets(model, arrays))
    with pytest.raises(ValueError, match="3 items given without 'index'.*num_train=8"):
        model.update_binary_targets({key: value[:3] for key, value in no_index.items()})


def test_bad_inputs_raise():
    model = make_model()
    arrays = training_arrays()
    with pytest.raises(ValueError, match=r"index values must be in \[0, 8\), got min 1 and max 8"):
        model.update_binary_targets(dict(arrays, index=np.arange(1, 9)))
    with pytest.raises(ValueError, match="expected a tf.data.Dataset"):
        model.update_binary_targets([arrays])
    with pytest.raises(ValueError, match="no update_binary_targets method"):
        callback = BinaryTargetUpdater(arrays)
        callback.set_model(keras.Sequential([keras.layers.Dense(1)]))
        callback.on_epoch_end(0)
