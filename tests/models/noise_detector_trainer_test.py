"""Tests for rs_hashing.models.noise_detector_trainer (CHNR phase 1; tiny, seconds)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.models.noise_detector import NoiseDetector
from rs_hashing.models.noise_detector_trainer import NoiseDetectorTrainer
from rs_hashing.training.noise_weights import roc_auc

IMAGE, TEXT, HIDDEN = 12, 10, 16


def synthetic_pairs(seed, count=64, classes=4):
    """Matched pairs: image and caption are two random projections of one noisy class
    latent; a caption of another class is a wrong match."""
    rng = np.random.default_rng(0)  # Class centroids and projections are shared by all draws.
    centroids, to_image, to_text = rng.normal(size=(classes, 8)), rng.normal(size=(8, IMAGE)), rng.normal(size=(8, TEXT))
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    latent = centroids[labels] + 0.5 * rng.normal(size=(count, 8))
    image = (latent @ to_image).astype("float32")
    text = ((latent + 0.3 * rng.normal(size=latent.shape)) @ to_text).astype("float32")
    return {"image": image, "text": text, "image_aug": image + 0.05, "text_aug": text - 0.05,
            "label": labels.astype("int32")}


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)


def make_trainer(**kwargs):
    detector = NoiseDetector(IMAGE, TEXT, hidden_dim=32, dropout=0.1, seed=0)
    trainer = NoiseDetectorTrainer(detector, seed=0, **kwargs)
    return detector, trainer


def test_detector_learns_matched_from_shuffled_pairs():
    train = synthetic_pairs(seed=1)
    detector, trainer = make_trainer()
    detector.adapt(np.concatenate([train["image"], train["text"]], axis=1))
    trainer.compile(keras.optimizers.AdamW(1e-2, beta_1=0.5, beta_2=0.9, weight_decay=1e-3))
    data = tf.data.Dataset.from_tensor_slices(train).shuffle(64, seed=0).batch(16, drop_remainder=True)
    history = trainer.fit(data, epochs=15, verbose=0, shuffle=False).history
    assert history["real_score"][-1] > history["fake_score"][-1]

    held_out = synthetic_pairs(seed=2)
    labels = held_out["label"]
    rng = np.random.default_rng(3)
    other_class = np.array([rng.choice(np.flatnonzero(labels != label)) for label in labels])
    real = detector.score_arrays(held_out["image"], held_out["text"])
    fake = detector.score_arrays(held_out["image"], held_out["text"][other_class])
    auc = roc_auc(np.r_[real, fake], np.r_[np.ones(len(real), bool), np.zeros(len(fake), bool)])
    assert auc > 0.9, auc


def test_fake_partners_come_from_another_class_or_another_item():
    _, trainer = make_trainer()
    for labels, allowed in (
        ([0, 0, 1, 1, 2, 2], lambda i, j, lab: lab[i] != lab[j]),
        ([3, 3, 3, 3], lambda i, j, lab: i != j),  # one class only: any other item
        ([0, 0, 0, 1], lambda i, j, lab: lab[i] != lab[j]),
    ):
        seen = set()
        for _ in range(20):
            partners = np.asarray(trainer.fake_partners(np.array(labels, "int32")))
            assert all(allowed(i, j, labels) for i, j in enumerate(partners)), (labels, partners)
            seen.add(tuple(partners))
        assert len(seen) > 1  # drawn anew at every call


def test_loss_terms_match_a_hand_computation():
    _, trainer = make_trainer()
    trainer.compile()
    pairs = synthetic_pairs(seed=1, count=2, classes=2)  # two classes: each item's fake is the other's caption
    terms = {k: float(v) for k, v in trainer.test_step(pairs).items()}
    detector = trainer.detector
    real = np.asarray(detector.logits(detector.standardize(detector.pair_features(pairs["image"], pairs["text"]))))
    fake = np.asarray(detector.logits(detector.standardize(detector.pair_features(pairs["image"],
                                                                                  pairs["text"][::-1]))))
    cross_entropy = np.mean(np.log1p(np.exp(-real))) + np.mean(np.log1p(np.exp(fake)))
    assert terms["cross_entropy"] == pytest.approx(cross_entropy, rel=1e-5)
    assert terms["real_score"] == pytest.approx(np.mean(1 / (1 + np.exp(-real))), rel=1e-5)
    assert terms["fake_score"] == pytest.approx(np.mean(1 / (1 + np.exp(-fake))), rel=1e-5)
    assert terms["gradient_penalty"] > 0
    assert terms["loss"] == pytest.approx(terms["cross_entropy"] + 10 * terms["gradient_penalty"], rel=1e-5)


def test_train_step_updates_only_the_detector_weights():
    detector, trainer = make_trainer(augmented_views=True)
    pairs = synthetic_pairs(seed=1, count=8)
    detector.adapt(np.concatenate([pairs["image"], pairs["text"]], axis=1))
    trainer.compile()
    trainable = [np.array(v) for v in detector.trainable_variables]
    statistics = [np.array(v) for v in detector.standardize_layer.variables]
    trainer.train_step({k: tf.constant(v) for k, v in pairs.items()})
    assert all(not np.array_equal(before, np.asarray(v)) for before, v in zip(trainable, detector.trainable_variables))
    for before, v in zip(statistics, detector.standardize_layer.variables):
        np.testing.assert_array_equal(before, np.asarray(v))


def test_default_optimizer_is_chnr_adamw():
    _, trainer = make_trainer()
    trainer.compile()
    optimizer = trainer.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert float(optimizer.learning_rate) == pytest.approx(1e-4)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.weight_decay) == (0.5, 0.9, 1e-3)


def test_bad_batches_and_arguments_are_errors():
    _, trainer = make_trainer(augmented_views=True)
    trainer.compile()
    pairs = synthetic_pairs(seed=1, count=4)
    del pairs["text_aug"]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['text_aug'\]"):
        trainer.test_step(pairs)
    with pytest.raises(ValueError, match="gp_weight must be a non-negative number"):
        NoiseDetectorTrainer(trainer.detector, gp_weight=-1.0)
    with pytest.raises(ValueError, match="detector must be a NoiseDetector"):
        NoiseDetectorTrainer(keras.Sequential())
