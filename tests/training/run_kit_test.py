"""Tests for rs_hashing.training.run_kit: schedule, model arguments, history, callbacks.
(The drivers' tests, duch_test and chnr_test, run the kit end to end.)"""

import pytest

from rs_hashing import config as config_lib
from rs_hashing.data import loaders
from rs_hashing.encoders.encoder_towers import EncoderTowers
from rs_hashing.errors import FeatureStoreError
from rs_hashing.features.feature_store import FeatureStore
from rs_hashing.training import run_kit
from rs_hashing.training.binary_target_updater import BinaryTargetUpdater
from rs_hashing.training.callbacks import StepDecay, StraightThrough
from rs_hashing.training.training_pairs import TrainingPairs
from tests import testing
from tests.training.tiny_store import FakeStore, fake_split, make_store, store_config


def test_learning_rate_schedule():
    t = config_lib.TrainConfig(learning_rate=1.0, lr_decay=0.5, lr_decay_epochs=(1, 3))
    assert [run_kit.learning_rate_at(t, e) for e in range(5)] == [1.0, 0.5, 0.5, 0.25, 0.25]


def test_build_model_takes_the_config_and_refuses_unknown_overrides():
    config = testing.tiny_config(bits=8, hidden_dim=16, target_codes="inference", variant="as_coded")
    model = run_kit.build_model(config, 12, 10, 20, use_adversarial=False)
    assert (model.bits, model.hidden_dim, model.num_train) == (8, 16, 20)
    assert (model.target_codes, model.variant, model.use_adversarial) == ("inference", "as_coded", False)
    assert model.hash_l2 == pytest.approx(config.train.weight_decay / 512)
    assert model.pair_weight_norm == "count"  # the released code's weighted sum
    assert run_kit.build_model(testing.tiny_config(), 12, 10, 20).pair_weight_norm == "weights"
    with pytest.raises(ValueError, match=r"unknown model argument\(s\) \['bitz'\]"):
        run_kit.build_model(config, 12, 10, 20, bitz=4)


def _callbacks_of(config, tmp_path):
    """(model, hashing callbacks) of a 2-epoch fit of `config` on items 1, 3, 4 of 12."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    pairs = TrainingPairs.from_store(FakeStore([1] * 12), fake_split(12, [0] * 12), items=[1, 3, 4])
    model = run_kit.build_model(config, 1, 1, 6)
    run_kit.compile_model(model, config)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), str(tmp_path / "checkpoints"), max_to_keep=1)
    return model, run_kit.hashing_callbacks(model, config, pairs, str(tmp_path), manager,
                                            tf.Variable(0, dtype=tf.int64), epochs=2, first_epoch=0)


@pytest.mark.parametrize("target_codes", ["training", "inference"])
def test_hashing_callbacks_refresh_targets_as_the_model_is_set(tmp_path, target_codes):
    config = testing.tiny_config(target_codes=target_codes, lr_decay_epochs=(1,))
    _, callbacks = _callbacks_of(config, tmp_path)
    decay, = [c for c in callbacks if isinstance(c, StepDecay)]
    assert [decay.schedule(e) for e in (0, 1)] == [config.train.learning_rate, config.train.learning_rate * 0.8]
    updater, = [c for c in callbacks if isinstance(c, BinaryTargetUpdater)]
    if target_codes == "training":
        assert updater.data is None  # the epoch's own training-step codes
    else:
        assert updater.data["index"].tolist() == [1, 3, 4]  # one pass over the items, global ids


@pytest.mark.parametrize("method, overrides, start", [
    ("duch", dict(epochs=10, straight_through_epochs=3), 7),
    ("duch", dict(epochs=10), 10),  # never on: the papers' continuous codes
    ("chnr", dict(phase1_epochs=4, phase2_epochs=6, straight_through_epochs=2), 8),  # across both phases
])
def test_straight_through_switches_on_for_the_last_epochs(tmp_path, method, overrides, start):
    model, callbacks = _callbacks_of(testing.tiny_config(method=method, **overrides), tmp_path)
    switch, = [c for c in callbacks if isinstance(c, StraightThrough)]
    assert switch.start == start
    states = []
    for epoch in (start - 1, start, start - 1):  # set at every epoch's start, so a resume agrees
        switch.on_epoch_begin(epoch)
        states.append(model.straight_through)
    assert states == [False, True, False]


def test_read_history_skips_missing_values(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,detector\n0,1.5,NA\n1,1.25,0.5\n")
    assert run_kit.read_history(str(path)) == {"loss": [1.5, 1.25], "detector": [0.5]}
    assert run_kit.read_history(str(tmp_path / "none.csv")) == {}


def test_compile_model_takes_jit_compile_from_the_config():
    for jit in (False, True):
        config = testing.tiny_config(jit_compile=jit)
        model = run_kit.build_model(config, 12, 10, 20)
        run_kit.compile_model(model, config)
        # Keras turns XLA off while op determinism is on (other tests here turn it on).
        from tensorflow.python.framework.config import is_op_determinism_enabled  # pylint: disable=import-outside-toplevel
        assert model.jit_compile is (jit and not is_op_determinism_enabled())



def test_a_store_made_for_another_cut_of_the_encoders_is_refused(tmp_path):
    data, features = make_store(tmp_path / "data")

    def config(**overrides):
        return config_lib.apply_overrides(store_config(data, features, str(tmp_path / "run")), overrides)

    towers = config(image_trainable_stages=1, text_trainable_layers=1)
    with pytest.raises(FeatureStoreError, match=r"holds frozen features \(image_trainable_stages=0, "
                                                r"text_trainable_layers=0\), but the config trains on the "
                                                r"activations of image_trainable_stages=1, text_trainable_layers=1"):
        run_kit.prepare(towers)
    # The same store rewritten as the activations of another cut.
    frozen = FeatureStore.open(features)
    arrays = {name: getattr(frozen, name) for name in ("image", "image_aug", "text", "text_aug")}
    cut = {"image_trainable_stages": 2, "text_trainable_layers": 0, "image_cut": "conv1", "text_cut": None,
           "dtype": "float16", "image_dim": 12, "text_dim": 10}
    FeatureStore.write(features, arrays, loaders.load_dataset(data, check_images=False), {"towers": cut})
    with pytest.raises(FeatureStoreError, match=r"holds the activations of image_trainable_stages=2, "
                                                r"text_trainable_layers=0 in float16, but the config trains on the "
                                                r"activations of image_trainable_stages=1, text_trainable_layers=1"):
        run_kit.prepare(towers)
    with pytest.raises(FeatureStoreError, match="but the config trains on frozen features"):
        run_kit.prepare(config())
    with pytest.raises(FeatureStoreError, match="in float16, but the config trains on the activations of "
                                                "image_trainable_stages=2, text_trainable_layers=0 in float32"):
        run_kit.prepare(config(image_trainable_stages=2, activation_dtype="float32"))
    assert run_kit.prepare(config(image_trainable_stages=2)).store.cut() == (2, 0)


def test_the_tops_learn_at_a_fraction_of_the_heads_rate_on_the_same_schedule(tmp_path):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    config = testing.tiny_config(image_trainable_stages=1, text_trainable_layers=1, tower_learning_rate_factor=0.25,
                                 lr_decay_epochs=(1,))
    towers = EncoderTowers.of_config(config)
    model = run_kit.build_model(config, 16, 16, 6, image_tower=towers.image_top(), text_tower=towers.text_top())
    run_kit.compile_model(model, config)
    rate = config.train.learning_rate
    assert float(model.tower_optimizer.learning_rate) == pytest.approx(0.25 * rate)
    pairs = TrainingPairs.from_store(FakeStore([1] * 12), fake_split(12, [0] * 12))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), str(tmp_path / "checkpoints"), max_to_keep=1)
    epoch = tf.Variable(0, dtype=tf.int64)
    callbacks = run_kit.hashing_callbacks(model, config, pairs, str(tmp_path), manager, epoch, epochs=2, first_epoch=0)
    schedules = {id(c.optimizer): c.schedule for c in callbacks if isinstance(c, StepDecay)}
    assert schedules[id(model.tower_optimizer)](1) == pytest.approx(0.25 * 0.8 * rate)
    assert schedules[id(model.hash_optimizer)](1) == pytest.approx(0.8 * rate)
    assert run_kit.hashing_checkpoint_objects(model, epoch)["tower_optimizer"] is model.tower_optimizer
