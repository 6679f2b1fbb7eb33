"""Tests for rs_hashing.training.run_kit: schedule, model arguments, history, callbacks.
(The drivers' tests, duch_test and chnr_test, run the kit end to end.)"""

import pytest

from rs_hashing import config as config_lib
from rs_hashing.training import run_kit
from rs_hashing.training.binary_target_updater import BinaryTargetUpdater
from rs_hashing.training.callbacks import StepDecay
from rs_hashing.training.training_pairs import TrainingPairs
from tests import testing
from tests.training.tiny_store import FakeStore, fake_split


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


@pytest.mark.parametrize("target_codes", ["training", "inference"])
def test_hashing_callbacks_refresh_targets_as_the_model_is_set(tmp_path, target_codes):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    config = testing.tiny_config(target_codes=target_codes, lr_decay_epochs=(1,))
    store = FakeStore([1] * 12)
    pairs = TrainingPairs.from_store(store, fake_split(12, [0] * 12), items=[1, 3, 4])
    model = run_kit.build_model(config, 1, 1, 6)
    run_kit.compile_model(model, config)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), str(tmp_path / "checkpoints"), max_to_keep=1)
    callbacks = run_kit.hashing_callbacks(model, config, pairs, str(tmp_path), manager,
                                          tf.Variable(0, dtype=tf.int64), epochs=2, first_epoch=0)
    decay, = [c for c in callbacks if isinstance(c, StepDecay)]
    assert [decay.schedule(e) for e in (0, 1)] == [config.train.learning_rate, config.train.learning_rate * 0.8]
    updater, = [c for c in callbacks if isinstance(c, BinaryTargetUpdater)]
    if target_codes == "training":
        assert updater.data is None  # the epoch's own training-step codes
    else:
        assert updater.data["index"].tolist() == [1, 3, 4]  # one pass over the items, global ids


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
        assert model.jit_compile is jit
