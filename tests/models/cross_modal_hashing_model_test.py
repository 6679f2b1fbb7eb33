"""Tests for rs_hashing.models.cross_modal_hashing_model (tiny dims, CPU, seconds)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.losses.nt_xent import nt_xent_loss
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel

FEATURES, HIDDEN, BITS, BATCH = 12, 16, 8, 4


def make_model(**overrides) -> CrossModalHashingModel:
    kwargs = dict(image_dim=FEATURES, text_dim=FEATURES, bits=BITS, hidden_dim=HIDDEN, num_train=16, seed=0)
    kwargs.update(overrides)
    return CrossModalHashingModel(**kwargs)


def random_batch(seed: int = 0, size: int = BATCH) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = {key: rng.normal(size=(size, FEATURES)).astype("float32")
             for key in ("image", "image_aug", "text", "text_aug")}
    batch["index"] = np.arange(size, dtype="int32")
    return batch


def separable_data(seed: int = 0) -> dict[str, np.ndarray]:
    """16 items of 4 classes; image and text features come from unrelated prototypes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 4)
    image_prototypes, text_prototypes = rng.normal(size=(2, 4, FEATURES))
    data = {"image": image_prototypes[labels] + 0.3 * rng.normal(size=(16, FEATURES)),
            "text": text_prototypes[labels] + 0.3 * rng.normal(size=(16, FEATURES))}
    data["image_aug"] = data["image"] + 0.1 * rng.normal(size=(16, FEATURES))
    data["text_aug"] = data["text"] + 0.1 * rng.normal(size=(16, FEATURES))
    data = {key: value.astype("float32") for key, value in data.items()}
    data["index"] = np.arange(16, dtype="int32")
    return data


def snapshot(variables) -> list[np.ndarray]:
    return [np.array(v) for v in variables]


def changed(before, variables) -> list[bool]:
    return [not np.array_equal(b, np.array(v)) for b, v in zip(before, variables)]


def paired_cosine(model, data) -> float:
    image_codes = np.array(model.encode_image(data["image"]))
    text_codes = np.array(model.encode_text(data["text"]))
    image_codes /= np.linalg.norm(image_codes, axis=1, keepdims=True)
    text_codes /= np.linalg.norm(text_codes, axis=1, keepdims=True)
    return float(np.mean(np.sum(image_codes * text_codes, axis=1)))


# ----------------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"bits": 0}, "bits must be a positive integer, got 0"),
        ({"num_train": -1}, "num_train must be a positive integer, got -1"),
        ({"variant": "as_written"}, "variant must be one of .*'as_written'"),
        ({"temperature": 0.0}, "temperature must be a positive number, got 0.0"),
        ({"quantization_weight": -1.0}, "quantization_weight must be a non-negative number, got -1.0"),
        ({"use_adversarial": "yes"}, "use_adversarial must be a bool, got 'yes'"),
        ({"seed": 1.5}, "seed must be an integer or None, got 1.5"),
    ],
)
def test_bad_arguments_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_model(**overrides)


def test_authors_equivalent_weights():
    weights = CrossModalHashingModel.authors_equivalent_weights(64)
    assert weights == pytest.approx(
        {"adversarial_weight": 0.01, "quantization_weight": 0.128, "bit_balance_weight": 81.92})
    config = make_model().get_config()
    assert config["adversarial_weight"] == pytest.approx(0.01)
    assert config["quantization_weight"] == pytest.approx(2 * 0.001 * BITS)
    assert config["bit_balance_weight"] == pytest.approx(2 * 0.01 * BITS**2)
    assert config["hash_l2"] == pytest.approx(5e-4 / 512)
    assert make_model(quantization_weight=0.5).get_config()["quantization_weight"] == 0.5


def test_config_round_trip():
    model = make_model(variant="as_coded", temperature=0.5, use_adversarial=False, seed=3)
    config = model.get_config()
    json.dumps(config)  # the trainer writes it as JSON
    rebuilt = CrossModalHashingModel.from_config(config)
    assert rebuilt.get_config() == config


def test_binary_targets_are_seeded_plus_minus_one():
    table = np.asarray(make_model(seed=5).binary_targets)
    assert table.shape == (16, BITS)
    assert set(np.unique(table)) == {-1.0, 1.0}
    np.testing.assert_array_equal(table, np.asarray(make_model(seed=5).binary_targets))
    assert not np.array_equal(table, np.asarray(make_model(seed=6).binary_targets))


def test_encode_call_and_binarize():
    model = make_model()
    batch = random_batch()
    image_codes = np.asarray(model.encode_image(batch["image"]))
    text_codes = np.asarray(model.encode_text(batch["text"]))
    assert image_codes.shape == text_codes.shape == (BATCH, BITS)
    assert np.all(np.abs(image_codes) < 1) and np.all(np.abs(text_codes) < 1)
    outputs = model({"image": batch["image"], "text": batch["text"]})
    np.testing.assert_allclose(np.asarray(outputs["image_codes"]), image_codes)


def test_compile_rejects_loss_and_shared_optimizer():
    model = make_model()
    with pytest.raises(ValueError, match="'loss' is not accepted"):
        model.compile(loss="mse")
    optimizer = keras.optimizers.Adam()
    with pytest.raises(ValueError, match="two different optimizer objects"):
        model.compile(hash_optimizer=optimizer, discriminator_optimizer=optimizer)


# ----------------------------------------------------------------------- loss terms


def test_augmented_caption_reaches_the_text_head_only_as_intended():
    batch = random_batch()
    intended = make_model()
    codes = intended.encode_views(batch, training=True)
    assert not np.allclose(np.asarray(codes["text_codes"]), np.asarray(codes["text_codes_aug"]))

    as_coded = make_model(variant="as_coded")
    codes = as_coded.encode_views(batch, training=True)
    np.testing.assert_array_equal(np.asarray(codes["text_codes"]), np.asarray(codes["text_codes_aug"]))

    # End to end through the loss: only as_intended's text term sees text_aug.
    other = dict(batch, text_aug=batch["text_aug"] * 5.0 + 1.0)
    for model, should_differ in ((intended, True), (as_coded, False)):
        model.compile()
        first = float(model.test_step(batch)["contrastive_intra_text"])
        model.reset_metrics()
        second = float(model.test_step(other)["contrastive_intra_text"])
        model.reset_metrics()
        assert (first != pytest.approx(second, rel=1e-6)) == should_differ


def test_generator_term_targets_image_codes_as_intended_and_text_codes_as_coded():
    batch = random_batch()
    other_images = dict(batch, image=batch["image"] + 3.0, image_aug=batch["image_aug"] + 3.0)
    for variant, should_differ in (("as_intended", True), ("as_coded", False)):
        model = make_model(variant=variant)
        model.compile()
        first = float(model.test_step(batch)["adversarial"])
        model.reset_metrics()
        second = float(model.test_step(other_images)["adversarial"])
        assert (first != pytest.approx(second, rel=1e-6)) == should_differ


def test_loss_terms_match_a_hand_computation():
    model = make_model(temperature=0.5)
    model.compile()
    batch = dict(random_batch(), index=np.array([3, 0, 7, 7], "int32"))
    terms = {k: float(v) for k, v in model.test_step(batch).items()}

    codes = {k: np.asarray(v, "float64") for k, v in model.encode_views(batch).items()}
    views = list(codes.values())
    targets = np.asarray(model.binary_targets)[batch["index"]]
    quantization = np.mean([np.mean((v - targets) ** 2) for v in views])
    bit_balance = np.mean([np.mean(np.mean(v, axis=1) ** 2) for v in views])
    inter = float(np.mean(nt_xent_loss(codes["image_codes"], codes["text_codes"], 0.5)))
    assert terms["quantization"] == pytest.approx(quantization, rel=1e-5)
    assert terms["bit_balance"] == pytest.approx(bit_balance, rel=1e-5)
    assert terms["contrastive_inter"] == pytest.approx(inter, rel=1e-5)

    l2 = 0.5 * model.hash_l2 * sum(float(np.sum(np.square(v))) for v in
                                   model.image_head.trainable_variables + model.text_head.trainable_variables)
    total = (terms["contrastive_inter"] + terms["contrastive_intra_image"] + terms["contrastive_intra_text"]
             + model.adversarial_weight * terms["adversarial"]
             + model.quantization_weight * terms["quantization"]
             + model.bit_balance_weight * terms["bit_balance"] + l2)
    assert terms["loss"] == pytest.approx(total, rel=1e-5)


def test_pair_weights_scale_only_the_inter_modal_term():
    model = make_model()
    model.compile()
    batch = random_batch()
    plain = {k: float(v) for k, v in model.test_step(batch).items()}
    model.reset_metrics()
    weighted = {k: float(v) for k, v in
                model.test_step(dict(batch, pair_weights=np.array([1, 1, 0, 1], "float32"))).items()}

    codes = model.encode_views(batch)
    per_item = np.asarray(nt_xent_loss(codes["image_codes"], codes["text_codes"]))
    assert weighted["contrastive_inter"] == pytest.approx(per_item[[0, 1, 3]].mean(), rel=1e-5)
    assert plain["contrastive_inter"] == pytest.approx(per_item.mean(), rel=1e-5)
    for name in ("contrastive_intra_image", "contrastive_intra_text", "adversarial",
                 "quantization", "bit_balance"):
        assert weighted[name] == pytest.approx(plain[name], rel=1e-6), name


# ----------------------------------------------------------------------- training steps


def test_discriminator_is_updated_first_and_each_optimizer_gets_its_own_variables():
    model = make_model()
    model.compile()
    calls = []
    for role, optimizer in (("discriminator", model.discriminator_optimizer), ("hash", model.hash_optimizer)):
        original = optimizer.apply

        def spy(gradients, variables, role=role, original=original):
            calls.append((role, {id(v) for v in variables}))
            return original(gradients, variables)

        optimizer.apply = spy
    model.train_step(random_batch())
    head_ids = {id(v) for v in model.image_head.trainable_variables + model.text_head.trainable_variables}
    assert calls == [("discriminator", {id(v) for v in model.discriminator.trainable_variables}),
                     ("hash", head_ids)]


def test_discriminator_step_changes_only_discriminator_variables():
    model = make_model()
    model.compile()
    codes = model.encode_views(random_batch(), training=True)
    head_variables = model.image_head.variables + model.text_head.variables + [model.binary_targets]
    heads_before = snapshot(head_variables)
    discriminator_before = snapshot(model.discriminator.variables)
    model._discriminator_step(codes)
    assert not any(changed(heads_before, head_variables))
    assert all(changed(discriminator_before, model.discriminator.variables))


def test_hashing_terms_leave_the_discriminator_untouched():
    # The generator term calls the discriminator statelessly: neither its weights nor its
    # BatchNorm statistics move, whatever the heads' gradient step does.
    model = make_model()
    model.compile()
    batch = random_batch()
    before = snapshot(model.discriminator.variables)
    with tf.GradientTape() as tape:
        codes = model.encode_views(batch, training=True)
        loss = model._loss_terms(batch, codes)["loss"]
    gradients = tape.gradient(loss, model.discriminator.trainable_variables)
    assert not any(changed(before, model.discriminator.variables))
    # The hashing loss does depend on the discriminator (it is not detached from it)...
    assert any(g is not None and np.any(np.asarray(g)) for g in gradients)
    # ...but the hashing step only applies gradients to the heads (checked above).


def test_without_adversarial_the_discriminator_never_changes():
    model = make_model(use_adversarial=False)
    model.compile()
    before = snapshot(model.discriminator.variables)
    heads_before = snapshot(model.image_head.trainable_variables)
    logs = model.train_step(random_batch())
    assert float(logs["adversarial"]) == 0.0 and float(logs["discriminator"]) == 0.0
    assert not any(changed(before, model.discriminator.variables))
    assert all(changed(heads_before, model.image_head.trainable_variables))


def test_train_step_requires_index_and_compile():
    model = make_model()
    batch = random_batch()
    with pytest.raises(ValueError, match="call compile"):
        model.train_step(batch)
    model.compile()
    with pytest.raises(ValueError, match=r"missing key\(s\) \['index'\]"):
        model.train_step({k: v for k, v in batch.items() if k != "index"})


def test_fit_lowers_the_loss_and_aligns_paired_codes():
    keras.utils.set_random_seed(0)
    data = separable_data()
    model = make_model(seed=0)
    model.compile(hash_optimizer=keras.optimizers.Adam(1e-2))
    full_batch = tf.data.Dataset.from_tensor_slices(data).batch(16)
    loss_before = model.evaluate(full_batch, verbose=0, return_dict=True)["loss"]
    cosine_before = paired_cosine(model, data)

    train = tf.data.Dataset.from_tensor_slices(data).shuffle(16, seed=0).batch(BATCH)
    history = model.fit(train, epochs=8, verbose=0).history  # 32 steps
    assert set(history) == {"loss", "contrastive_inter", "contrastive_intra_image", "contrastive_intra_text",
                            "adversarial", "quantization", "bit_balance", "discriminator"}
    assert all(np.isfinite(v).all() for v in history.values())
    assert history["loss"][-1] < history["loss"][0] - 0.5
    loss_after = model.evaluate(full_batch, verbose=0, return_dict=True)["loss"]
    assert loss_after < loss_before - 1.0
    cosine_after = paired_cosine(model, data)
    assert cosine_after > cosine_before + 0.5 and cosine_after > 0.6


def test_save_and_load_weights_round_trip(tmp_path):
    model = make_model(seed=1)
    model.compile()
    batch = random_batch()
    model.train_step(batch)
    model.update_binary_targets(dict(random_batch(size=16)))
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)

    restored = CrossModalHashingModel.from_config(dict(model.get_config(), seed=2))
    restored.load_weights(path)
    np.testing.assert_array_equal(np.asarray(restored.encode_image(batch["image"])),
                                  np.asarray(model.encode_image(batch["image"])))
    np.testing.assert_array_equal(np.asarray(restored.encode_text(batch["text"])),
                                  np.asarray(model.encode_text(batch["text"])))
    np.testing.assert_array_equal(np.asarray(restored.binary_targets), np.asarray(model.binary_targets))
    codes = np.asarray(model.encode_text(batch["text"]))
    np.testing.assert_array_equal(np.asarray(restored.discriminator(codes)),
                                  np.asarray(model.discriminator(codes)))


@pytest.mark.slow
def test_fit_with_xla(tmp_path):
    # jit_compile="auto" means XLA on a GPU; on this CPU it takes ~15 s to compile.
    model = make_model()
    model.compile(jit_compile=True)
    history = model.fit(tf.data.Dataset.from_tensor_slices(separable_data()).batch(BATCH),
                        epochs=2, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())


# ----------------------------------------------------------------------- binary targets


def _view_code_mean(model, batch, training):
    codes = model.encode_views(batch, training=training)
    return sum(np.asarray(codes[n]) for n in ("image_codes", "image_codes_aug", "text_codes",
                                               "text_codes_aug")) / 4


def test_targets_come_from_the_training_steps_codes_of_the_items_seen():
    model = make_model(seed=3)
    model.compile()
    before = np.asarray(model.binary_targets).copy()
    batch = dict(random_batch(seed=5, size=6), index=np.array([9, 2, 4, 11, 0, 7], "int32"))
    # The codes the step sees: training-mode heads before the step's update.
    expected = np.where(_view_code_mean(model, batch, training=True) >= 0, 1.0, -1.0)
    model.train_step(batch)
    np.testing.assert_array_equal(np.asarray(model.binary_targets), before)  # not before the epoch's end
    table = model.refresh_binary_targets()
    np.testing.assert_array_equal(table[batch["index"]], expected)
    others = np.setdiff1d(np.arange(16), batch["index"])
    np.testing.assert_array_equal(table[others], before[others])
    np.testing.assert_array_equal(np.asarray(model.binary_targets), table)
    # Nothing seen since: a second refresh changes nothing.
    np.testing.assert_array_equal(model.refresh_binary_targets(), table)


def test_a_partial_last_batch_trains_and_records_its_items():
    model = make_model(seed=4)
    model.compile()
    data = separable_data()
    batches = tf.data.Dataset.from_tensor_slices(data).batch(6)  # 6, 6, 4
    history = model.fit(batches, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    seen, _ = model._epoch_codes.take()  # pylint: disable=protected-access
    assert seen.all()


def test_inference_targets_refuse_refresh_and_record_nothing():
    model = make_model(target_codes="inference")
    model.compile()
    model.train_step(random_batch())
    with pytest.raises(ValueError, match="target_codes='inference'"):
        model.refresh_binary_targets()
    seen, _ = model._epoch_codes.take()  # pylint: disable=protected-access
    assert not seen.any()


def test_epoch_codes_are_not_weights():
    model = make_model()
    names = [v.path if hasattr(v, "path") else v.name for v in model.variables]
    assert not any("epoch_codes" in n or "epoch_seen" in n for n in names)


def test_count_normalised_pair_weights_as_the_authors_chnr():
    model = make_model(pair_weight_norm="count")
    model.compile()
    batch = random_batch()
    weights = np.array([1, 0.5, 0, 1], "float32")
    terms = {k: float(v) for k, v in model.test_step(dict(batch, pair_weights=weights)).items()}
    codes = model.encode_views(batch)
    per_item = np.asarray(nt_xent_loss(codes["image_codes"], codes["text_codes"]))
    assert terms["contrastive_inter"] == pytest.approx(float((weights * per_item).sum() / 4), rel=1e-5)
    with pytest.raises(ValueError, match="pair_weight_norm must be one of"):
        make_model(pair_weight_norm="sum")


def test_straight_through_ranks_the_signs_and_passes_the_codes_gradient_back():
    model = make_model()
    batch = random_batch(seed=3)

    def terms():
        return {k: float(v) for k, v in model._loss_terms(batch, model.encode_views(batch)).items()}

    off = terms()
    model.set_straight_through(True)
    assert model.straight_through
    on = terms()

    codes = {k: np.asarray(v, "float64") for k, v in model.encode_views(batch).items()}
    signs = {k: np.where(v >= 0, 1.0, -1.0) for k, v in codes.items()}
    assert on["contrastive_inter"] == pytest.approx(
        float(np.mean(nt_xent_loss(signs["image_codes"], signs["text_codes"]))), rel=1e-5)
    assert on["contrastive_intra_image"] == pytest.approx(
        float(np.mean(nt_xent_loss(signs["image_codes"], signs["image_codes_aug"]))), rel=1e-5)
    assert on["contrastive_inter"] != pytest.approx(off["contrastive_inter"], rel=1e-3)
    # Quantisation and bit balance still see the continuous codes.
    assert on["quantization"] == pytest.approx(off["quantization"], rel=1e-6)
    assert on["bit_balance"] == pytest.approx(off["bit_balance"], rel=1e-6)

    # Backward: the gradient of the loss at the signs, carried through the codes as if
    # sign were the identity: d/dW sum(h * dL/ds |s=sign(h)).
    weights = model.image_head.trainable_variables
    with tf.GradientTape() as tape:
        ranked = model._loss_terms(batch, model.encode_views(batch))["contrastive_inter"]
    straight = tape.gradient(ranked, weights)
    image_signs = tf.constant(signs["image_codes"], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(image_signs)
        value = tf.reduce_mean(nt_xent_loss(image_signs, tf.constant(signs["text_codes"], tf.float32)))
    upstream = tape.gradient(value, image_signs)
    with tf.GradientTape() as tape:
        surrogate = tf.reduce_sum(model.encode_image(batch["image"]) * upstream)
    expected = tape.gradient(surrogate, weights)
    for got, want in zip(straight, expected):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-7)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in straight)

    model.set_straight_through(False)
    assert terms()["contrastive_inter"] == pytest.approx(off["contrastive_inter"], rel=1e-6)
    names = [v.path if hasattr(v, "path") else v.name for v in model.variables]
    assert not any("straight_through" in n for n in names)


# ----------------------------------------------------------------------- trainable encoder tops


@pytest.fixture(scope="module")
def towers():
    """A random EfficientNet-Lite0 (32 px) cut before its last stage and the tiny BERT cut
    before its last layer."""
    from rs_hashing import config as config_lib  # pylint: disable=import-outside-toplevel
    from rs_hashing.encoders.encoder_towers import EncoderTowers  # pylint: disable=import-outside-toplevel
    from rs_hashing.encoders.frozen_encoders import FrozenEncoders  # pylint: disable=import-outside-toplevel

    features = config_lib.FeatureConfig(image_encoder="efficientnet_lite0", image_weights="none", image_size=32,
                                        text_encoder="tiny_bert", sequence_length=8)
    encoders = FrozenEncoders(features)
    calibrate_batch_norm(encoders.image, np.random.default_rng(9).uniform(0, 255, (8, 32, 32, 3)).astype("float32"))
    return EncoderTowers(encoders, image_stages=1, text_layers=1)


def calibrate_batch_norm(model: keras.Model, pixels: np.ndarray) -> None:
    """Sets each BatchNorm's moving statistics to those of its input on `pixels`, in
    order: a random network's activations then keep their scale through its 16 blocks,
    as a pretrained one's do (with the initial statistics they vanish to ~1e-10)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = np.asarray(keras.Model(model.input, layer.input)(pixels))
            layer.moving_mean.assign(inputs.mean(axis=(0, 1, 2)))
            layer.moving_variance.assign(inputs.var(axis=(0, 1, 2)) + 1e-3)


def tower_model(towers, **overrides) -> CrossModalHashingModel:
    return make_model(image_dim=1280, text_dim=16, image_tower=towers.image_top(), text_tower=towers.text_top(),
                      **overrides)


def tower_batch(towers, seed: int = 0, size: int = BATCH) -> dict[str, np.ndarray]:
    """Activations of random pixels and token states of captions, as a tower store caches them."""
    rng = np.random.default_rng(seed)
    captions = ["many green trees", "a river near two planes .", "the beach", "some boats are in the sea"]
    batch = {}
    for view in ("", "_aug"):
        pixels = rng.uniform(0, 255, (size, 32, 32, 3)).astype("float32")
        batch[f"image{view}"] = np.asarray(towers.image_bottom(pixels), np.float16)
        states = towers.encode_text_states(list(rng.permutation(captions))[:size])
        batch[f"text{view}"] = states["states"].astype(np.float16)
        batch[f"text{view}_mask"] = states["padding_mask"]
    batch["index"] = np.arange(size, dtype="int32")
    return batch


def test_gradients_reach_exactly_the_unfrozen_layers(towers):
    model = tower_model(towers)
    model.compile(tower_optimizer=keras.optimizers.Adam(1e-3))
    image_top_layers = {layer.name for layer in model.image_tower.layers if layer.trainable_weights}
    assert image_top_layers == {"block15_expand_conv", "block15_expand_bn", "block15_dwconv", "block15_dw_bn",
                                "block15_project_conv", "block15_project_bn", "head_conv", "head_bn"}
    text_top_layers = {layer.name for layer in model.text_tower.layers if layer.trainable_weights}
    assert text_top_layers == {"transformer_layer_1"}
    # The optimisers hold exactly the heads and the tops' trainable variables.
    heads = model.image_head.trainable_variables + model.text_head.trainable_variables
    tops = model.image_tower.trainable_variables + model.text_tower.trainable_variables
    assert {id(v) for v in model.tower_optimizer._trainable_variables} == {id(v) for v in tops}
    assert {id(v) for v in model.hash_optimizer._trainable_variables} == {id(v) for v in heads}

    batch = tower_batch(towers)
    with tf.GradientTape() as tape:
        terms = model._loss_terms(batch, model.encode_views(batch, training=True))
    gradients = tape.gradient(terms["loss"], tops)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients)

    encoder_weights = snapshot(towers.encoders.image.weights + towers.encoders.text.backbone.weights)
    statistics = snapshot(model.image_tower.non_trainable_variables)
    before = snapshot(tops)
    model.train_step(batch)
    assert all(changed(before, tops))
    # Inference-mode towers: the pretrained BatchNorm statistics do not move.
    assert not any(changed(statistics, model.image_tower.non_trainable_variables))
    # Nothing below the cut (the frozen encoders, whose bottoms made the cache) changes.
    assert not any(changed(encoder_weights, towers.encoders.image.weights + towers.encoders.text.backbone.weights))


def test_towers_take_activations_and_masks_and_round_trip(towers, tmp_path):
    model = tower_model(towers)
    batch = tower_batch(towers)
    whole_image = towers.encoders.image(np.random.default_rng(0).uniform(0, 255, (BATCH, 32, 32, 3)).astype("float32"))
    assert np.asarray(model.encode_image(batch["image"])).shape == (BATCH, BITS)
    assert whole_image.shape == (BATCH, 1280)
    with pytest.raises(ValueError, match="missing key.*text_aug_mask"):
        model.encode_views({k: v for k, v in batch.items() if k != "text_aug_mask"})
    with pytest.raises(ValueError, match="the text tower needs the token states' padding_mask"):
        model.encode_text(batch["text"])
    with pytest.raises(ValueError, match="text_tower gives 16-d features, but the head takes 12"):
        make_model(text_tower=towers.text_top())
    with pytest.raises(ValueError, match="tower_optimizer given, but the model has no"):
        make_model().compile(tower_optimizer=keras.optimizers.Adam())
    model.compile()
    assert float(model.tower_optimizer.learning_rate) == pytest.approx(1e-5)
    model.train_step(batch)  # the towers move away from the pretrained weights
    path = str(tmp_path / "tower.weights.h5")
    model.save_weights(path)
    config = model.get_config()
    json.dumps(config)
    restored = CrossModalHashingModel.from_config(config)
    restored.build_for_features(2)
    restored.load_weights(path)
    for view in ("image", "text"):
        np.testing.assert_array_equal(
            np.asarray(restored.call(batch)[f"{view}_codes"]), np.asarray(model.call(batch)[f"{view}_codes"]))
    assert restored.get_config() == config
