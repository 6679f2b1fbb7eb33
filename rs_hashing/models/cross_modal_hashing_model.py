"""DUCH on precomputed features: two hashing heads, a code discriminator, the losses.

Loss scale and weights
----------------------
Every term here is a mean (over rows, samples, views and bits), so its weight does not
depend on the batch size or code length. The released DUCH code instead SUMMED every
term over the batch, with weights a = 0.01 (adversarial), b = 0.001 (quantisation),
g = 0.01 (bit balance) tuned at batch N = 256. We keep the authors' balance exactly.

Assumption (stated because the DUCH repository's own `contrastive_loss.py` could not be
read): its NT-Xent is a SUM over the 2N rows. The same authors' `NTXentLoss` in the CHNR
repository (with the call signature the DUCH controller uses) ends in `.sum()`, and
METHOD.md says every term was summed. The three contrastive terms are the reference
scale (weight 1).

With codes h (N samples, K bits), the authors' hashing loss for one batch is

    L_auth = sum_pairs sum_{r<2N} l_r                     (3 NT-Xent sums, 2N rows each)
           + a * sum_i [bce(D(h_i)) + bce(D(h_aug_i))]      (2 views)
           + b * sum_i sum_{4 views} sum_k (B_ik - h_ik)^2
           + g * sum_i sum_{4 views} (sum_k h_ik)^2.

Our terms are C = (1/2N) sum_r l_r per pair, A = mean_i of the two views' mean bce,
Q = mean over samples, views and bits of (B - h)^2 and BB = mean over samples and views
of (mean_k h_ik)^2. Substituting,

    L_auth = 2N * [C_inter + C_intra_image + C_intra_text
                   + a * A + (2 b K) * Q + (2 g K^2) * BB],

so the equivalent mean-based weights are adversarial = a = 0.01, quantization =
2 b K = 0.002 K, bit_balance = 2 g K^2 = 0.02 K^2 (K = 64: 0.01, 0.128, 81.92). N
cancels because the contrastive sum grows with N like the others; the weights do depend
on K because the authors summed over bits. (Had their NT-Xent been a mean, every other
weight would be 2N = 512 times larger.) `authors_equivalent_weights(bits)` returns these.

The batch size of 256 still matters for the L2 penalty. The authors used torch Adam's
`weight_decay=5e-4` on the hashing nets: coupled L2, `grad += 5e-4 * theta` before the
Adam moments, for EVERY parameter (kernels, biases, BatchNorm scale and offset). Our
loss is L_auth / 2N, so the same balance needs `grad += (5e-4 / 512) * theta`. We add it
as an explicit loss term `0.5 * hash_l2 * sum(theta^2)` over all head variables, with
`hash_l2 = 5e-4 / 512` by default: neither Keras' `kernel_regularizer` (kernels only)
nor the optimizers' `weight_decay` (decoupled, AdamW style) is the same thing. Likewise
their discriminator Adam had `weight_decay=1e-4` on a loss that summed the two view
pairs; ours averages them, so `discriminator_l2 = 1e-4 / 2`.

Other choices, each a deliberate match to or fix of the released code:
- `variant="as_intended"` feeds the augmented caption to the text head and applies the
  generator term to the image codes; `"as_coded"` reproduces the release, where
  `txt2 = txt1` overwrote the augmented caption and the generator term hit the text
  codes.
- The discriminator is always run with batch statistics (the authors never put it in
  eval mode); in the hashing step and in `test_step` it is called statelessly, so only
  its own update step changes its BatchNorm statistics.
- Gradient-penalty interpolation weights are one per pair (WGAN-GP); the authors drew
  one per bit.
- Binary targets come, as in the authors' code, from the codes of the epoch's own
  training steps (`target_codes="training"`: each step stores the mean of its items'
  four view codes, `refresh_binary_targets` signs them at the epoch's end); or, with
  `target_codes="inference"`, from an extra inference-mode pass over every item
  (`update_binary_targets`), which costs about a third of an epoch's compute more.
- CHNR's pair weights: `pair_weight_norm="weights"` normalises the weighted
  inter-modal term once, sum(w * l) / sum(w); `"count"` divides by the number of pairs,
  sum(w * l) / N, which is the authors' unnormalised weighted sum on our mean scale (the
  `as_coded` setting).

Trainable encoder tops (tower mode, issue 19; `rs_hashing.encoders.encoder_towers`)
---------------------------------------------------------------------------------------
With an `image_tower` (`text_tower`) the image (text) side of a batch holds the frozen
bottom's cached activations, and the tower, the top of the pretrained encoder, turns
them into the features its head takes; it trains in the same step, on the same loss.
Deliberate choices:
- Towers always run in inference mode: BatchNormalization normalises with its
  pretrained moving statistics (its scale and offset still train) and dropout is off.
  Batch statistics would drift the ImageNet statistics the rest of the pretrained
  layers expect, and the towers then compute in training exactly what evaluation and
  the exports compute.
- The coupled L2 stays on the heads only: it pulls weights towards zero, not towards
  their pretrained values.
- The towers have their own optimiser (`tower_optimizer`, an Adam like the heads', at a
  smaller learning rate): they start from pretrained weights, the heads from random
  ones.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from rs_hashing.codes import binarize

from rs_hashing.losses.adversarial import discriminator_loss, generator_loss
from rs_hashing.losses.bit_balance import bit_balance_loss
from rs_hashing.losses.nt_xent import nt_xent_loss
from rs_hashing.losses.quantization import quantization_loss
from rs_hashing.losses.weighting import weighted_mean
from rs_hashing.models.code_discriminator import CodeDiscriminator
from rs_hashing.models.hash_head import HashHead, check_positive_int

# The authors' weights and optimiser settings, for sums over a batch of 256.
AUTHORS_ADVERSARIAL_WEIGHT = 0.01
AUTHORS_QUANTIZATION_WEIGHT = 0.001
AUTHORS_BIT_BALANCE_WEIGHT = 0.01
AUTHORS_BATCH_SIZE = 256
AUTHORS_HASH_WEIGHT_DECAY = 5e-4
AUTHORS_DISCRIMINATOR_WEIGHT_DECAY = 1e-4

VARIANTS = ("as_intended", "as_coded")
TERM_NAMES = (
    "loss",
    "contrastive_inter",
    "contrastive_intra_image",
    "contrastive_intra_text",
    "adversarial",
    "quantization",
    "bit_balance",
    "discriminator",
)
VIEW_CODE_NAMES = ("image_codes", "image_codes_aug", "text_codes", "text_codes_aug")
TARGET_CODES = ("training", "inference")
PAIR_WEIGHT_NORMS = ("weights", "count")

# Inference batches for `update_binary_targets` when given whole arrays.
_TARGET_UPDATE_BATCH_SIZE = 1024


def _check_non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(
            f"CrossModalHashingModel: {name} must be a non-negative number, got {value!r}."
        )
    return float(value)


@keras.saving.register_keras_serializable(package="rs_hashing")
class CrossModalHashingModel(keras.Model):
    """DUCH's hashing heads, code discriminator and losses, trained with `fit`.

    Batches are dicts: `image`, `image_aug` [N, image_dim], `text`, `text_aug`
    [N, text_dim] feature vectors, `index` [N] int rows of the binary target table
    (needed for training), and optionally `pair_weights` [N], CHNR's noise-detector
    weights, which scale only the inter-modal contrastive term. With an `image_tower`
    the image views are its input activations [N, ...]; with a `text_tower` the text
    views are token states [N, T, H] and the batch holds their padding masks
    `text_mask` and `text_aug_mask` [N, T] as well.

    The hashing objective is
        loss = w_inter * C(image, text; pair_weights) + w_ii * C(image, image_aug)
             + w_tt * C(text, text_aug) + w_a * A + w_q * Q + w_bb * BB
             + 0.5 * hash_l2 * ||head variables||^2,
    each term a mean; see the module docstring for how the default weights reproduce
    the authors' balance. Each `train_step` first updates the discriminator on the
    batch's codes, then the heads.

    Args:
        image_dim: image feature length.
        text_dim: text feature length.
        bits: code length K.
        hidden_dim: hidden width of both heads (4096 in DUCH).
        num_train: number of training items = rows of the binary target table.
        contrastive_inter_weight: weight of NT-Xent(image, text).
        contrastive_intra_image_weight: weight of NT-Xent(image, image_aug).
        contrastive_intra_text_weight: weight of NT-Xent(text, text_aug).
        adversarial_weight: weight of the generator term; None = the authors' balance.
        quantization_weight: weight of the quantisation term; None = the authors'
            balance (2 * 0.001 * bits).
        bit_balance_weight: weight of the bit-balance term; None = the authors' balance
            (2 * 0.01 * bits^2).
        temperature: NT-Xent temperature (1.0 as coded by the authors).
        gp_weight: gradient-penalty weight of the discriminator loss.
        hash_l2: coupled L2 coefficient on all head variables (torch Adam weight-decay
            semantics); default 5e-4 / 512.
        discriminator_l2: coupled L2 coefficient on the discriminator; default 5e-5.
        variant: "as_intended" or "as_coded" (see the module docstring).
        use_adversarial: False drops the discriminator and the adversarial term (CHNR).
        target_codes: "training" (binary targets from the epoch's training-step codes,
            as the authors) or "inference" (from an extra inference pass).
        pair_weight_norm: "weights" (sum(w l) / sum(w)) or "count" (sum(w l) / N, the
            authors' CHNR weighting) for the pair-weighted inter-modal term.
        image_tower: the trainable top of the image encoder, a Keras model from the
            cached activations to features [N, image_dim] (`EncoderTowers.image_top`);
            None: the image views are features.
        text_tower: the trainable top of the text encoder, a Keras model from
            {"states" [N, T, H], "padding_mask" [N, T]} to features [N, text_dim]
            (`EncoderTowers.text_top`); None: the text views are features.
        seed: seeds the binary target table and the step-time `SeedGenerator`; None
            draws fresh randomness.
        **kwargs: passed to `keras.Model` (`name`, `trainable`, `dtype`).

    Raises:
        ValueError: for any invalid argument; the message names it and its value.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        bits: int,
        hidden_dim: int = 4096,
        *,
        num_train: int,
        contrastive_inter_weight: float = 1.0,
        contrastive_intra_image_weight: float = 1.0,
        contrastive_intra_text_weight: float = 1.0,
        adversarial_weight: float | None = None,
        quantization_weight: float | None = None,
        bit_balance_weight: float | None = None,
        temperature: float = 1.0,
        gp_weight: float = 10.0,
        hash_l2: float = AUTHORS_HASH_WEIGHT_DECAY / (2 * AUTHORS_BATCH_SIZE),
        discriminator_l2: float = AUTHORS_DISCRIMINATOR_WEIGHT_DECAY / 2,
        variant: str = "as_intended",
        use_adversarial: bool = True,
        target_codes: str = "training",
        pair_weight_norm: str = "weights",
        image_tower: keras.Model | None = None,
        text_tower: keras.Model | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ):
        owner = "CrossModalHashingModel"
        for name, value in (
            ("image_dim", image_dim),
            ("text_dim", text_dim),
            ("bits", bits),
            ("hidden_dim", hidden_dim),
            ("num_train", num_train),
        ):
            check_positive_int(owner, name, value)
        if variant not in VARIANTS:
            raise ValueError(f"{owner}: variant must be one of {VARIANTS}, got {variant!r}.")
        if target_codes not in TARGET_CODES:
            raise ValueError(f"{owner}: target_codes must be one of {TARGET_CODES}, got {target_codes!r}.")
        if pair_weight_norm not in PAIR_WEIGHT_NORMS:
            raise ValueError(
                f"{owner}: pair_weight_norm must be one of {PAIR_WEIGHT_NORMS}, got {pair_weight_norm!r}."
            )
        if not isinstance(use_adversarial, bool):
            raise ValueError(f"{owner}: use_adversarial must be a bool, got {use_adversarial!r}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"{owner}: seed must be an integer or None, got {seed!r}.")
        for name, tower, width in (("image_tower", image_tower, image_dim), ("text_tower", text_tower, text_dim)):
            if tower is None:
                continue
            if not isinstance(tower, keras.Model):
                raise ValueError(f"{owner}: {name} must be a keras.Model or None, got {type(tower).__name__}.")
            if tower.output_shape[-1] != width:
                raise ValueError(f"{owner}: {name} gives {tower.output_shape[-1]}-d features, but the head "
                                 f"takes {width} ({name.split('_')[0]}_dim).")
        is_number = isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
        if not is_number or not temperature > 0:
            raise ValueError(
                f"{owner}: temperature must be a positive number, got {temperature!r}."
            )

        defaults = self.authors_equivalent_weights(int(bits))
        if adversarial_weight is None:
            adversarial_weight = defaults["adversarial_weight"]
        if quantization_weight is None:
            quantization_weight = defaults["quantization_weight"]
        if bit_balance_weight is None:
            bit_balance_weight = defaults["bit_balance_weight"]

        super().__init__(**kwargs)

        self.image_dim = int(image_dim)
        self.text_dim = int(text_dim)
        self.bits = int(bits)
        self.hidden_dim = int(hidden_dim)
        self.num_train = int(num_train)
        self.contrastive_inter_weight = _check_non_negative(
            "contrastive_inter_weight", contrastive_inter_weight
        )
        self.contrastive_intra_image_weight = _check_non_negative(
            "contrastive_intra_image_weight", contrastive_intra_image_weight
        )
        self.contrastive_intra_text_weight = _check_non_negative(
            "contrastive_intra_text_weight", contrastive_intra_text_weight
        )
        self.adversarial_weight = _check_non_negative("adversarial_weight", adversarial_weight)
        self.quantization_weight = _check_non_negative("quantization_weight", quantization_weight)
        self.bit_balance_weight = _check_non_negative("bit_balance_weight", bit_balance_weight)
        self.temperature = float(temperature)
        self.gp_weight = _check_non_negative("gp_weight", gp_weight)
        self.hash_l2 = _check_non_negative("hash_l2", hash_l2)
        self.discriminator_l2 = _check_non_negative("discriminator_l2", discriminator_l2)
        self.variant = variant
        self.use_adversarial = use_adversarial
        self.target_codes = target_codes
        self.pair_weight_norm = pair_weight_norm
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.seed = None if seed is None else int(seed)

        # Distinct initializer seeds per network (None keeps Keras' global seeding).
        head_seed = (lambda offset: None) if self.seed is None else (lambda offset: 1000 * self.seed + offset)
        self.image_head = HashHead(self.image_dim, self.bits, self.hidden_dim, seed=head_seed(100), name="image_head")
        self.text_head = HashHead(self.text_dim, self.bits, self.hidden_dim, seed=head_seed(200), name="text_head")
        self.discriminator = CodeDiscriminator(self.bits, seed=head_seed(300), name="discriminator")

        initial_targets = np.random.default_rng(self.seed).choice(
            np.array([-1.0, 1.0], dtype="float32"), size=(self.num_train, self.bits)
        )
        self.binary_targets = self.add_weight(
            shape=(self.num_train, self.bits),
            initializer=lambda shape, dtype=None: ops.convert_to_tensor(
                initial_targets, dtype=dtype
            ),
            dtype="float32",
            trainable=False,
            name="binary_targets",
        )
        # The epoch's training-step codes (target_codes="training"): kept out of the
        # model's weights and checkpoints (a resumed run restarts the epoch anyway).
        self._epoch_codes = _EpochCodes(self.num_train, self.bits)
        # 1.0 while the contrastive terms see the codes' signs (straight-through); set
        # per epoch by the training callbacks, untracked like the epoch codes.
        self._straight_through = _Switch()
        # Step-time randomness (gradient-penalty interpolation) comes only from here.
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="step_seed_generator")
        self._trackers = {name: keras.metrics.Mean(name=name) for name in TERM_NAMES}
        self._discriminator_optimizer = None
        self._tower_optimizer = None
        # Every sub-layer was built above; mark the model built so weights can be saved
        # and loaded without a dummy forward pass.
        self.built = True

    # ------------------------------------------------------------------ weights

    @staticmethod
    def authors_equivalent_weights(bits: int) -> dict[str, float]:
        """Mean-based weights with the released code's balance (module docstring).

        Args:
            bits: code length K.

        Returns:
            {"adversarial_weight": 0.01, "quantization_weight": 0.002 K,
             "bit_balance_weight": 0.02 K^2}.
        """
        check_positive_int("authors_equivalent_weights", "bits", bits)
        return {
            "adversarial_weight": AUTHORS_ADVERSARIAL_WEIGHT,
            "quantization_weight": 2.0 * AUTHORS_QUANTIZATION_WEIGHT * bits,
            "bit_balance_weight": 2.0 * AUTHORS_BIT_BALANCE_WEIGHT * bits**2,
        }

    # ------------------------------------------------------------------ encoding

    def encode_image(self, features: Any, training: bool = False) -> Any:
        """Continuous image codes in (-1, 1), shape [N, bits], from [N, image_dim], or
        from the image tower's input activations when there is one."""
        if self.image_tower is not None:
            # Inference mode always (BatchNorm's pretrained statistics): see the module
            # docstring. Cached activations may be float16.
            features = self.image_tower(ops.cast(features, self.compute_dtype), training=False)
        return self.image_head(features, training=training)

    def encode_text(self, features: Any, training: bool = False, padding_mask: Any = None) -> Any:
        """Continuous text codes in (-1, 1), shape [N, bits], from [N, text_dim], or
        from token states [N, T, H] and their `padding_mask` [N, T] when there is a
        text tower (the mask is not used without one)."""
        if self.text_tower is not None:
            if padding_mask is None:
                raise ValueError("CrossModalHashingModel.encode_text: the text tower needs the token states' "
                                 "padding_mask.")
            features = self.text_tower({"states": ops.cast(features, self.compute_dtype),
                                        "padding_mask": ops.cast(padding_mask, "int32")}, training=False)
        return self.text_head(features, training=training)

    def _check_batch(self, batch: Any, require_index: bool) -> None:
        if not isinstance(batch, Mapping):
            raise ValueError(
                "CrossModalHashingModel: a batch must be a dict with keys image, "
                f"image_aug, text, text_aug, index; got {type(batch).__name__}."
            )
        required = ["image", "image_aug", "text"]
        if self.variant == "as_intended":
            required.append("text_aug")
        if self.text_tower is not None:
            required.append("text_mask")
            if self.variant == "as_intended":
                required.append("text_aug_mask")
        if require_index:
            required.append("index")
        missing = [key for key in required if key not in batch]
        if missing:
            raise ValueError(
                f"CrossModalHashingModel: batch is missing key(s) {missing}; it has "
                f"{sorted(batch)}."
            )

    def encode_views(self, batch: Mapping[str, Any], training: bool = False) -> dict[str, Any]:
        """Codes of the four views of a batch, as the losses see them.

        In the `as_coded` variant the augmented caption is replaced by the original
        before the forward pass (the released code's `txt2 = txt1`), so
        `text_codes_aug` equals `text_codes`. Each view is a separate head call, so in
        training mode each is normalised with its own batch statistics, as in the
        authors' code.

        Args:
            batch: dict with `image`, `image_aug`, `text` and (as_intended) `text_aug`.
            training: BatchNorm mode of the heads.

        Returns:
            {"image_codes", "image_codes_aug", "text_codes", "text_codes_aug"}, each
            [N, bits].
        """
        self._check_batch(batch, require_index=False)
        augmented = "text" if self.variant == "as_coded" else "text_aug"
        return {
            "image_codes": self.encode_image(batch["image"], training=training),
            "image_codes_aug": self.encode_image(batch["image_aug"], training=training),
            "text_codes": self.encode_text(batch["text"], training=training, padding_mask=batch.get("text_mask")),
            "text_codes_aug": self.encode_text(batch[augmented], training=training,
                                               padding_mask=batch.get(f"{augmented}_mask")),
        }

    def build_for_features(self, batch_size: int = 1) -> None:
        """Runs every sub-network once on zeros of the feature shapes.

        The model already creates all its variables in `__init__`; this is a cheap
        guarantee for code that restores a `tf.train.Checkpoint` or loads weights and
        wants every layer to have been called. It changes no variable.

        Args:
            batch_size: rows of the dummy batch (>= 1).
        """
        check_positive_int("build_for_features", "batch_size", batch_size)
        image_shape = self.image_tower.input_shape[1:] if self.image_tower is not None else (self.image_dim,)
        self.encode_image(ops.zeros((batch_size, *image_shape)), training=False)
        if self.text_tower is not None:
            states_shape = self.text_tower.input["states"].shape[1:]
            length = states_shape[0] or 2
            self.encode_text(ops.zeros((batch_size, length, states_shape[1])), training=False,
                             padding_mask=ops.ones((batch_size, length), "int32"))
        else:
            self.encode_text(ops.zeros((batch_size, self.text_dim)), training=False)
        self.discriminator(ops.zeros((batch_size, self.bits)), training=False)

    def call(self, inputs: Mapping[str, Any], training: bool = False) -> dict[str, Any]:
        """Codes for whichever of `image` / `text` the input dict holds (for predict)."""
        outputs = {}
        if "image" in inputs:
            outputs["image_codes"] = self.encode_image(inputs["image"], training=training)
        if "text" in inputs:
            outputs["text_codes"] = self.encode_text(inputs["text"], training=training,
                                                     padding_mask=inputs.get("text_mask"))
        if not outputs:
            raise ValueError(
                "CrossModalHashingModel: inputs need an 'image' or 'text' key, got "
                f"{sorted(inputs)}."
            )
        return outputs

    # ------------------------------------------------------------------ losses

    def _head_variables(self) -> list[Any]:
        return self.image_head.trainable_variables + self.text_head.trainable_variables

    def _tower_variables(self) -> list[Any]:
        return [variable for tower in (self.image_tower, self.text_tower) if tower is not None
                for variable in tower.trainable_variables]

    @property
    def has_towers(self) -> bool:
        """Whether an encoder top trains with the heads."""
        return self.image_tower is not None or self.text_tower is not None

    @staticmethod
    def _l2_penalty(variables: Iterable[Any], coefficient: float) -> Any:
        """`0.5 * coefficient * sum(v^2)`: gradient `coefficient * v`, torch's coupled L2."""
        squared_norms = [ops.sum(ops.square(v)) for v in variables]
        if coefficient == 0 or not squared_norms:
            return ops.zeros(())
        return 0.5 * coefficient * ops.sum(ops.stack(squared_norms))

    def _discriminate(self, codes: Any, update_statistics: bool) -> Any:
        """Discriminator logits [N, 1], always with batch statistics.

        With `update_statistics=False` the call is stateless: its BatchNorm moving
        averages are computed and dropped, so the hashing step and `test_step` leave
        every discriminator variable untouched.
        """
        if update_statistics:
            return self.discriminator(codes, training=True)
        logits, _ = self.discriminator.stateless_call(
            [ops.convert_to_tensor(v) for v in self.discriminator.trainable_variables],
            [ops.convert_to_tensor(v) for v in self.discriminator.non_trainable_variables],
            codes,
            training=True,
        )
        return logits

    def _discriminator_objective(self, codes: Mapping[str, Any], update_statistics: bool) -> Any:
        """Mean over the two (real text, fake image) view pairs of BCE + GP, plus L2."""
        view_pairs = (
            (codes["text_codes"], codes["image_codes"]),
            (codes["text_codes_aug"], codes["image_codes_aug"]),
        )
        per_pair = []
        for real_codes, fake_codes in view_pairs:
            interpolation = keras.random.uniform(
                (ops.shape(real_codes)[0], 1), seed=self.seed_generator, dtype=real_codes.dtype
            )
            per_pair.append(
                discriminator_loss(
                    lambda x: self._discriminate(x, update_statistics),
                    real_codes,
                    fake_codes,
                    interpolation,
                    gp_weight=self.gp_weight,
                )
            )
        penalty = self._l2_penalty(self.discriminator.trainable_variables, self.discriminator_l2)
        return (per_pair[0] + per_pair[1]) / 2.0 + penalty

    def _loss_terms(self, batch: Mapping[str, Any], codes: Mapping[str, Any]) -> dict[str, Any]:
        """The hashing objective and its unweighted terms; shared by train and test step.

        A batch without `index` (possible only in `test_step`, e.g. held-out items that
        have no binary target) reports a quantisation term of 0.
        """
        image_codes, image_codes_aug = codes["image_codes"], codes["image_codes_aug"]
        text_codes, text_codes_aug = codes["text_codes"], codes["text_codes_aug"]
        zero = ops.zeros((), dtype=image_codes.dtype)
        # The contrastive terms rank as retrieval will: with the switch on, they see
        # sign(h) forward and pass h's gradient back (straight-through); the
        # adversarial, quantisation and bit-balance terms keep the continuous codes.
        ranked = {name: self._straight_through.apply(codes[name]) for name in VIEW_CODE_NAMES}

        # Pair weights judge image-caption correspondence, so they scale only the
        # inter-modal term; the intra-modal terms compare an item with itself.
        contrastive_inter = weighted_mean(
            nt_xent_loss(ranked["image_codes"], ranked["text_codes"], self.temperature),
            batch.get("pair_weights"),
            normalize_by=self.pair_weight_norm,
        )
        contrastive_intra_image = weighted_mean(
            nt_xent_loss(ranked["image_codes"], ranked["image_codes_aug"], self.temperature)
        )
        contrastive_intra_text = weighted_mean(
            nt_xent_loss(ranked["text_codes"], ranked["text_codes_aug"], self.temperature)
        )

        if self.use_adversarial:
            if self.variant == "as_intended":
                generated = (image_codes, image_codes_aug)
            else:  # the released code pushed the text codes towards themselves
                generated = (text_codes, text_codes_aug)
            per_sample = (
                generator_loss(self._discriminate(generated[0], update_statistics=False))
                + generator_loss(self._discriminate(generated[1], update_statistics=False))
            ) / 2.0
            adversarial = weighted_mean(per_sample)
        else:
            adversarial = zero

        if "index" in batch:
            targets = ops.take(self.binary_targets, ops.cast(batch["index"], "int32"), axis=0)
            per_sample = sum(quantization_loss(codes[name], targets) for name in VIEW_CODE_NAMES)
            quantization = weighted_mean(per_sample / len(VIEW_CODE_NAMES))
        else:
            quantization = zero

        per_sample = sum(bit_balance_loss(codes[name]) for name in VIEW_CODE_NAMES)
        bit_balance = weighted_mean(per_sample / len(VIEW_CODE_NAMES))

        total = (
            self.contrastive_inter_weight * contrastive_inter
            + self.contrastive_intra_image_weight * contrastive_intra_image
            + self.contrastive_intra_text_weight * contrastive_intra_text
            + self.adversarial_weight * adversarial
            + self.quantization_weight * quantization
            + self.bit_balance_weight * bit_balance
            # The heads only: an L2 on the towers would pull pretrained weights to zero.
            + self._l2_penalty(self._head_variables(), self.hash_l2)
        )
        return {
            "loss": total,
            "contrastive_inter": contrastive_inter,
            "contrastive_intra_image": contrastive_intra_image,
            "contrastive_intra_text": contrastive_intra_text,
            "adversarial": adversarial,
            "quantization": quantization,
            "bit_balance": bit_balance,
        }

    # ------------------------------------------------------------------ training

    def compile(
        self,
        hash_optimizer: keras.optimizers.Optimizer | None = None,
        discriminator_optimizer: keras.optimizers.Optimizer | None = None,
        tower_optimizer: keras.optimizers.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        """Stores the optimisers; other kwargs (jit_compile, run_eagerly,
        steps_per_execution) go to `keras.Model.compile`.

        Args:
            hash_optimizer: updates the two heads; default Adam(1e-4, epsilon=1e-8)
                (torch's epsilon). It becomes `self.optimizer`, so learning-rate
                callbacks act on it. Its L2 is the `hash_l2` loss term, not the
                optimiser's (decoupled) `weight_decay`.
            discriminator_optimizer: updates the discriminator; default
                Adam(1e-4, beta_1=0.5, beta_2=0.9, epsilon=1e-8).
            tower_optimizer: updates the trainable encoder tops, when the model has
                any; default Adam(1e-5, epsilon=1e-8). Learning-rate callbacks must set
                it as well.

        Raises:
            ValueError: if `optimizer`, `loss` or `metrics` is passed (the losses are
                built in), one optimiser object is given for two roles, or a
                tower_optimizer is given to a model without towers.
        """
        for key in ("optimizer", "loss", "loss_weights", "metrics", "weighted_metrics"):
            if key in kwargs:
                raise ValueError(
                    f"CrossModalHashingModel.compile: {key!r} is not accepted; pass "
                    "hash_optimizer and discriminator_optimizer (the losses are built in)."
                )
        if hash_optimizer is None:
            hash_optimizer = keras.optimizers.Adam(learning_rate=1e-4, epsilon=1e-8)
        if discriminator_optimizer is None:
            discriminator_optimizer = keras.optimizers.Adam(
                learning_rate=1e-4, beta_1=0.5, beta_2=0.9, epsilon=1e-8
            )
        if tower_optimizer is not None and not self.has_towers:
            raise ValueError("CrossModalHashingModel.compile: tower_optimizer given, but the model has no "
                             "image_tower or text_tower.")
        if tower_optimizer is None and self.has_towers:
            tower_optimizer = keras.optimizers.Adam(learning_rate=1e-5, epsilon=1e-8)
        if hash_optimizer is discriminator_optimizer:
            raise ValueError(
                "CrossModalHashingModel.compile: hash_optimizer and discriminator_optimizer "
                "must be two different optimizer objects."
            )
        if tower_optimizer is not None and (tower_optimizer is hash_optimizer
                                            or tower_optimizer is discriminator_optimizer):
            raise ValueError(
                "CrossModalHashingModel.compile: tower_optimizer must be an optimizer object of its own "
                "(one Adam updating two variable sets would count its steps twice)."
            )
        super().compile(optimizer=hash_optimizer, **kwargs)
        self._discriminator_optimizer = discriminator_optimizer
        self._tower_optimizer = tower_optimizer
        # Build each optimiser on exactly its own variables now; otherwise `fit` would
        # build the hashing optimiser on every trainable variable, discriminator included.
        if not self.optimizer.built:
            self.optimizer.build(self._head_variables())
        if not discriminator_optimizer.built:
            discriminator_optimizer.build(self.discriminator.trainable_variables)
        if tower_optimizer is not None and not tower_optimizer.built:
            tower_optimizer.build(self._tower_variables())

    @property
    def hash_optimizer(self) -> keras.optimizers.Optimizer | None:
        """The optimiser of the two heads (`self.optimizer`)."""
        return self.optimizer

    @property
    def discriminator_optimizer(self) -> keras.optimizers.Optimizer | None:
        """The optimiser of the code discriminator."""
        return self._discriminator_optimizer

    @property
    def tower_optimizer(self) -> keras.optimizers.Optimizer | None:
        """The optimiser of the trainable encoder tops (None without towers)."""
        return self._tower_optimizer

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """One `Mean` tracker per loss term, reset by `fit` at each epoch."""
        return list(self._trackers.values())

    def _update_trackers(self, values: Mapping[str, Any]) -> dict[str, Any]:
        for name, tracker in self._trackers.items():
            tracker.update_state(values[name])
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def _discriminator_step(self, codes: Mapping[str, Any]) -> Any:
        discriminator_variables = self.discriminator.trainable_variables
        with tf.GradientTape() as tape:
            value = self._discriminator_objective(codes, update_statistics=True)
        gradients = tape.gradient(value, discriminator_variables)
        self._discriminator_optimizer.apply(gradients, discriminator_variables)
        return value

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Discriminator update on this batch's codes, then the heads' (and towers')
        update."""
        if self._discriminator_optimizer is None:
            raise ValueError("CrossModalHashingModel: call compile() before training.")
        self._check_batch(batch, require_index=True)
        head_variables, tower_variables = self._head_variables(), self._tower_variables()
        with tf.GradientTape() as tape:
            # One forward pass of the heads serves both updates, as in the authors' code.
            codes = self.encode_views(batch, training=True)
            if self.use_adversarial:
                # The discriminator learns from constant codes; nothing of its update
                # belongs on the heads' tape. The heads' terms below then see the
                # freshly updated discriminator.
                with tape.stop_recording():
                    discriminator_value = self._discriminator_step(codes)
            else:
                discriminator_value = ops.zeros(())
            terms = self._loss_terms(batch, codes)
        gradients = tape.gradient(terms["loss"], head_variables + tower_variables)
        self.optimizer.apply(gradients[:len(head_variables)], head_variables)
        if tower_variables:
            self._tower_optimizer.apply(gradients[len(head_variables):], tower_variables)
        if self.target_codes == "training":
            mean_codes = sum(codes[name] for name in VIEW_CODE_NAMES) / len(VIEW_CODE_NAMES)
            self._epoch_codes.record(batch["index"], ops.stop_gradient(mean_codes))
        return self._update_trackers({**terms, "discriminator": discriminator_value})

    def test_step(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The same terms in inference mode; nothing but the trackers (and the seed
        generator) changes."""
        self._check_batch(batch, require_index=False)
        codes = self.encode_views(batch, training=False)
        if self.use_adversarial:
            discriminator_value = self._discriminator_objective(codes, update_statistics=False)
        else:
            discriminator_value = ops.zeros(())
        terms = self._loss_terms(batch, codes)
        return self._update_trackers({**terms, "discriminator": discriminator_value})

    # ------------------------------------------------------------------ binary targets

    def _iterate_target_batches(self, data: Any) -> Iterable[Mapping[str, Any]]:
        if isinstance(data, tf.data.Dataset):
            return iter(data)
        if not isinstance(data, Mapping):
            raise ValueError(
                "update_binary_targets: expected a tf.data.Dataset of dict batches or a "
                f"dict of arrays, got {type(data).__name__}."
            )
        arrays = {key: np.asarray(value) for key, value in data.items()}
        self._check_batch(arrays, require_index=False)
        view_keys = [key for key in ("image", "image_aug", "text", "text_aug") if key in arrays]
        lengths = {key: len(arrays[key]) for key in view_keys}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"update_binary_targets: views have different lengths {lengths}.")
        (length,) = set(lengths.values())
        if "index" not in arrays:
            if length != self.num_train:
                raise ValueError(
                    f"update_binary_targets: {length} items given without 'index', but the "
                    f"table has num_train={self.num_train} rows; pass 'index' for a subset."
                )
            arrays["index"] = np.arange(length)
        return (
            {key: value[start : start + _TARGET_UPDATE_BATCH_SIZE] for key, value in arrays.items()}
            for start in range(0, length, _TARGET_UPDATE_BATCH_SIZE)
        )

    def set_straight_through(self, enabled: bool) -> None:
        """From the next step on, the contrastive terms see sign(code) in the forward pass
        and the continuous code's gradient (straight-through estimator), or, disabled,
        the continuous codes (the papers'). sign(0) = +1, as the codes' sign."""
        self._straight_through.set(enabled)

    @property
    def straight_through(self) -> bool:
        return self._straight_through.enabled

    def refresh_binary_targets(self) -> np.ndarray:
        """Sets the binary target of every item trained on since the last refresh to the
        sign of the mean of its four view codes from its (last) training step, as the
        authors' code does at each epoch's end; sign(0) = +1, other items keep theirs.
        Called at the end of every epoch (BinaryTargetUpdater) when
        `target_codes="training"`.

        Returns:
            The new table as a numpy array [num_train, bits].
        """
        if self.target_codes != "training":
            raise ValueError(
                "refresh_binary_targets: this model has target_codes='inference'; its targets come "
                "from update_binary_targets(data)."
            )
        seen, codes = self._epoch_codes.take()
        return self._set_targets(np.flatnonzero(seen), codes[seen])

    def _set_targets(self, rows: np.ndarray, mean_codes: np.ndarray) -> np.ndarray:
        """Binary targets of `rows` := sign(mean_codes) (0 -> +1); the new table."""
        table = np.array(ops.convert_to_numpy(self.binary_targets))
        table[rows] = ops.convert_to_numpy(binarize(mean_codes))
        self.binary_targets.assign(table)
        return table

    def update_binary_targets(self, data: Any) -> np.ndarray:
        """Sets each listed item's binary target to sign(mean of its four views' codes).

        Codes are computed in inference mode; sign(0) = +1. Items not in `data` keep
        their current target. Called at the end of every epoch (BinaryTargetUpdater).

        Args:
            data: a `tf.data.Dataset` of dict batches (the training batches: `image`,
                `image_aug`, `text`, `text_aug`, `index`; other keys are ignored), or a
                dict of arrays with those keys (`index` optional when the arrays cover
                all num_train items in order).

        Returns:
            The new table as a numpy array [num_train, bits].

        Raises:
            ValueError: for a bad input type, missing keys, or an index outside
                [0, num_train).
        """
        rows, mean_codes = [np.zeros([0], "int64")], [np.zeros([0, self.bits], "float32")]
        for batch in self._iterate_target_batches(data):
            if "index" not in batch:
                raise ValueError(
                    f"update_binary_targets: batch is missing 'index'; it has {sorted(batch)}."
                )
            index = np.asarray(ops.convert_to_numpy(batch["index"])).astype("int64").reshape(-1)
            if index.size and (index.min() < 0 or index.max() >= self.num_train):
                raise ValueError(
                    f"update_binary_targets: index values must be in [0, {self.num_train}), "
                    f"got min {index.min()} and max {index.max()}."
                )
            codes = self.encode_views(batch, training=False)
            rows.append(index)
            mean_codes.append(ops.convert_to_numpy(sum(codes[name] for name in VIEW_CODE_NAMES)
                                                   / len(VIEW_CODE_NAMES)))
        # An item listed twice (caption_mode="all_pairs") takes its last listing, as NumPy assigns.
        return self._set_targets(np.concatenate(rows), np.concatenate(mean_codes))

    # ------------------------------------------------------------------ config

    def get_config(self) -> dict[str, Any]:
        """Every constructor argument (weights resolved to numbers; towers as their
        serialized Keras configs, their weights are the model's)."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "bits": self.bits,
            "hidden_dim": self.hidden_dim,
            "num_train": self.num_train,
            "contrastive_inter_weight": self.contrastive_inter_weight,
            "contrastive_intra_image_weight": self.contrastive_intra_image_weight,
            "contrastive_intra_text_weight": self.contrastive_intra_text_weight,
            "adversarial_weight": self.adversarial_weight,
            "quantization_weight": self.quantization_weight,
            "bit_balance_weight": self.bit_balance_weight,
            "temperature": self.temperature,
            "gp_weight": self.gp_weight,
            "hash_l2": self.hash_l2,
            "discriminator_l2": self.discriminator_l2,
            "variant": self.variant,
            "use_adversarial": self.use_adversarial,
            "target_codes": self.target_codes,
            "pair_weight_norm": self.pair_weight_norm,
            "image_tower": _serialize_tower(self.image_tower),
            "text_tower": _serialize_tower(self.text_tower),
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CrossModalHashingModel":
        """Inverse of `get_config` (configs saved before towers existed have none)."""
        config = dict(config)
        for name in ("image_tower", "text_tower"):
            config[name] = _deserialize_tower(config.get(name))
        return cls(**config)


def _serialize_tower(tower: keras.Model | None) -> dict | None:
    return None if tower is None else keras.saving.serialize_keras_object(tower)


def _deserialize_tower(config: dict | None) -> keras.Model | None:
    if config is None:
        return None
    # A text tower holds keras-hub transformer layers, registered by importing keras-hub.
    import keras_hub  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

    # Deserialising consumes the dict it reads; the caller's config stays whole.
    return keras.saving.deserialize_keras_object(copy.deepcopy(config))


class _EpochCodes:
    """The mean view codes of each item's last training step since the last `take`.

    A plain object on purpose: its variables are not tracked by Keras, so they are
    neither model weights nor checkpointed (they only live within one epoch).
    """

    def __init__(self, num_items: int, bits: int):
        self.codes = tf.Variable(tf.zeros([num_items, bits]), trainable=False, name="epoch_codes")
        self.seen = tf.Variable(tf.zeros([num_items], tf.bool), trainable=False, name="epoch_seen")

    def record(self, index: Any, codes: Any) -> None:
        rows = ops.expand_dims(ops.cast(index, "int32"), 1)
        self.codes.scatter_nd_update(rows, ops.cast(codes, "float32"))
        self.seen.scatter_nd_update(rows, ops.ones_like(ops.cast(index, "bool")))

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """(seen [N] bool, codes [N, bits]) and a fresh start for the next epoch."""
        seen, codes = self.seen.numpy(), self.codes.numpy()
        self.seen.assign(tf.zeros_like(self.seen))
        return seen, codes


class _Switch:
    """A 0/1 flag read inside the compiled train step (a variable, so flipping it does
    not retrace); untracked like `_EpochCodes`: it is set again at every epoch's start."""

    def __init__(self):
        self.value = tf.Variable(0.0, trainable=False, name="straight_through")

    def set(self, enabled: bool) -> None:
        self.value.assign(1.0 if enabled else 0.0)

    @property
    def enabled(self) -> bool:
        return bool(self.value.numpy())

    def apply(self, codes: Any) -> Any:
        """codes + on x stop_gradient(sign(codes) - codes): the signs forward, the
        identity's gradient back, when on; the codes unchanged when off."""
        gate = ops.cast(self.value, codes.dtype)
        return codes + gate * ops.stop_gradient(binarize(codes) - codes)
