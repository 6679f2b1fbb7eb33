"""Phase 1 of CHNR: a `NoiseDetector` learns matched from mismatched pairs, with `fit`.

Each batch holds trusted (correctly matched) pairs. Their fakes are made inside the batch:
every image gets the caption of another item, of another class where the batch has one
(the corruption that the noise injector applies), else of any other item. The detector
minimises binary cross-entropy (real -> 1, fake -> 0, from logits) plus a gradient
penalty (WGAN-GP: the norm of the logit's input gradient pulled towards 1 on random
interpolations between paired real and fake inputs), both taken on standardised pair
features (see `NoiseDetector`). With `augmented_views` the real/fake sets are built for
the four combinations of original and augmented views of image and caption, as in the
authors' code: data augmentation of the small trusted subset (the detector later scores
only (image, caption) pairs), at four times the cost of a step.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from rs_hashing.losses.adversarial import gradient_penalty
from rs_hashing.models.noise_detector import NoiseDetector

# (image view, text view) combinations that make real and fake pairs.
ALL_VIEW_PAIRS = (("image", "text"), ("image_aug", "text_aug"), ("image", "text_aug"), ("image_aug", "text"))
TERM_NAMES = ("loss", "cross_entropy", "gradient_penalty", "real_score", "fake_score")


@keras.saving.register_keras_serializable(package="rs_hashing")
class NoiseDetectorTrainer(keras.Model):
    """Trains a `NoiseDetector` (phase 1 of CHNR) with `fit`.

    Batches are dicts: `image`, `text` (and, with `augmented_views`, `image_aug`,
    `text_aug`) feature vectors [N, dim] of trusted pairs, and `label` [N] int scene
    classes of the items (equal labels everywhere when the data has no classes).

    Args:
        detector: the detector to train; its variables are the only ones updated.
        gp_weight: weight of the gradient penalty (10 in CHNR).
        augmented_views: also train on the augmented views (four view combinations);
            False uses only (image, text).
        seed: seeds the step-time randomness (fake partners, interpolation weights).
        **kwargs: passed to `keras.Model`.

    Raises:
        ValueError: for a detector that is not a NoiseDetector, a negative gp_weight, or
            a non-bool augmented_views.
    """

    def __init__(self, detector: NoiseDetector, gp_weight: float = 10.0, augmented_views: bool = False,
                 seed: int | None = None, **kwargs: Any):
        if not isinstance(detector, NoiseDetector):
            raise ValueError(f"NoiseDetectorTrainer: detector must be a NoiseDetector, got {type(detector).__name__}.")
        if isinstance(gp_weight, bool) or not isinstance(gp_weight, numbers.Real) or not gp_weight >= 0:
            raise ValueError(f"NoiseDetectorTrainer: gp_weight must be a non-negative number, got {gp_weight!r}.")
        if not isinstance(augmented_views, bool):
            raise ValueError(f"NoiseDetectorTrainer: augmented_views must be a bool, got {augmented_views!r}.")
        super().__init__(**kwargs)
        self.detector = detector
        self.gp_weight = float(gp_weight)
        self.augmented_views = augmented_views
        self.seed = seed
        self.view_pairs = ALL_VIEW_PAIRS if augmented_views else ALL_VIEW_PAIRS[:1]
        self.seed_generator = keras.random.SeedGenerator(seed, name="detector_step_seed_generator")
        self._trackers = {name: keras.metrics.Mean(name=name) for name in TERM_NAMES}
        self.built = True

    def compile(self, optimizer: keras.optimizers.Optimizer | None = None, **kwargs: Any) -> None:
        """Default optimizer: CHNR's AdamW(1e-4, betas (0.5, 0.9), weight decay 1e-3),
        torch's epsilon; decoupled decay, as torch's AdamW. Losses are built in."""
        for key in ("loss", "loss_weights", "metrics", "weighted_metrics"):
            if key in kwargs:
                raise ValueError(f"NoiseDetectorTrainer.compile: {key!r} is not accepted (the loss is built in).")
        if optimizer is None:
            optimizer = keras.optimizers.AdamW(learning_rate=1e-4, beta_1=0.5, beta_2=0.9, weight_decay=1e-3,
                                               epsilon=1e-8)
        super().compile(optimizer=optimizer, **kwargs)
        if not self.optimizer.built:
            self.optimizer.build(self.detector.trainable_variables)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self._trackers.values())

    def fake_partners(self, labels: Any) -> Any:
        """For each item, a random other item of another class ([N] int32 indices).

        A row whose class is the only one in the batch gets any other item instead.
        """
        labels = ops.convert_to_tensor(labels)
        count = ops.shape(labels)[0]
        different_class = ops.not_equal(labels[:, None], labels[None, :])
        other_item = ops.logical_not(ops.eye(count, dtype="bool"))
        has_other_class = ops.any(different_class, axis=1, keepdims=True)
        allowed = ops.where(has_other_class, different_class, other_item)
        # Uniform draw among the allowed columns: the argmax of uniform noise over them.
        noise = keras.random.uniform((count, count), seed=self.seed_generator)
        return ops.cast(ops.argmax(ops.where(allowed, noise, -ops.ones_like(noise)), axis=1), "int32")

    def _check_batch(self, batch: Any) -> None:
        if not isinstance(batch, Mapping):
            raise ValueError(f"NoiseDetectorTrainer: a batch must be a dict, got {type(batch).__name__}.")
        needed = sorted({key for pair in self.view_pairs for key in pair} | {"label"})
        missing = [key for key in needed if key not in batch]
        if missing:
            raise ValueError(f"NoiseDetectorTrainer: batch is missing key(s) {missing}; it has {sorted(batch)}.")

    def real_and_fake_pairs(self, batch: Mapping[str, Any]) -> tuple[Any, Any]:
        """Standardised real pairs and their fakes, [V * N, pair_dim] each (V view pairs)."""
        partners = self.fake_partners(batch["label"])
        real, fake = [], []
        for image_key, text_key in self.view_pairs:
            real.append(self.detector.pair_features(batch[image_key], batch[text_key]))
            fake.append(self.detector.pair_features(batch[image_key], ops.take(batch[text_key], partners, axis=0)))
        return (self.detector.standardize(ops.concatenate(real, axis=0)),
                self.detector.standardize(ops.concatenate(fake, axis=0)))

    def _objective(self, batch: Mapping[str, Any], training: bool) -> dict[str, Any]:
        real, fake = self.real_and_fake_pairs(batch)
        real_logits = self.detector.logits(real, training=training)
        fake_logits = self.detector.logits(fake, training=training)
        # BCE from logits: -log(sigmoid(x)) = softplus(-x), -log(1 - sigmoid(x)) = softplus(x).
        cross_entropy = ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))
        if self.gp_weight > 0:
            interpolation = keras.random.uniform((ops.shape(real)[0], 1), seed=self.seed_generator, dtype=real.dtype)
            penalty = gradient_penalty(lambda x: self.detector.logits(x, training=training), real, fake, interpolation)
        else:
            penalty = ops.zeros((), dtype=real.dtype)
        return {
            "loss": cross_entropy + self.gp_weight * penalty,
            "cross_entropy": cross_entropy,
            "gradient_penalty": penalty,
            "real_score": ops.mean(ops.sigmoid(real_logits)),
            "fake_score": ops.mean(ops.sigmoid(fake_logits)),
        }

    def _update_trackers(self, values: Mapping[str, Any]) -> dict[str, Any]:
        for name, tracker in self._trackers.items():
            tracker.update_state(values[name])
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """One update of the detector's variables (nothing else is trained)."""
        self._check_batch(batch)
        variables = self.detector.trainable_variables
        with tf.GradientTape() as tape:
            terms = self._objective(batch, training=True)
        self.optimizer.apply(tape.gradient(terms["loss"], variables), variables)
        return self._update_trackers(terms)

    def test_step(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The same terms with dropout off; changes nothing but the trackers and seed."""
        self._check_batch(batch)
        return self._update_trackers(self._objective(batch, training=False))

    def call(self, inputs: Any, training: bool = False) -> Any:
        """The detector's probabilities for concatenated pair features."""
        return self.detector(inputs, training=training)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "detector": keras.saving.serialize_keras_object(self.detector),
            "gp_weight": self.gp_weight,
            "augmented_views": self.augmented_views,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "NoiseDetectorTrainer":
        config = dict(config)
        config["detector"] = keras.saving.deserialize_keras_object(config["detector"])
        return cls(**config)
