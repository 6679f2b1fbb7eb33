"""Run configuration: frozen dataclasses, named presets and validated overrides.

A run is described by one `Config` made of four sections (`data`, `features`, `model`,
`train`). Entry points pick a preset by name and override single fields from flags with
`apply_overrides`; an unknown or ambiguous key is an error, never silently ignored.
Every run writes its resolved config as `config.json` beside its outputs
(`save_config`), so a result can be reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any, Mapping

DATASETS = ("sentinel2_default", "rsicd", "ucm", "sydney", "rsitmd", "nwpu", "karpathy", "csv")
METHODS = ("duch", "chnr")
VARIANTS = ("as_intended", "as_coded")
CAPTION_MODES = ("one", "random", "all_pairs")
NOISE_WEIGHTINGS = ("probability", "cubed", "threshold")
CHNR_LOSSES = ("chnr", "duch")
TEXT_POOLINGS = ("masked_mean", "last4_sum_mean", "cls")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def _check_fraction(name: str, value: float, *, allow_zero: bool, allow_one: bool = False) -> None:
    low_ok = value > 0 or (allow_zero and value == 0)
    high_ok = value < 1 or (allow_one and value == 1)
    if not (low_ok and high_ok):
        raise ValueError(f"{name}={value!r} must lie in {'[' if allow_zero else '('}0, 1{']' if allow_one else ')'}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name}={value!r} must be > 0")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which archive to read and how the papers' protocol splits it.

    Attributes:
      dataset: a name from `DATASETS`. `sentinel2_default` is the embedded demo set
        (real Sentinel-2 pixels, rule-derived labels, generated captions) built on the
        user's machine; the caption datasets use the Karpathy JSON layout; `csv` is an
        image folder plus `image,caption[,label]` rows.
      data_dir: folder holding the caption file and the image folder. Empty for the
        embedded default means its cache folder.
      caption_file: caption JSON or CSV; empty means the single one found in data_dir.
      image_dir: image folder; empty means the usual name found in data_dir.
      label_file: optional `filename,label` CSV (or JSON mapping) that overrides the
        scene classes found in the caption file or in the file names.
      split_seed: seed of Python's `random` for the papers' split (42 in both papers).
      caption_seed: seed of the generator that picks one caption per image (42).
      train_fraction: share of all images used for training (0.5).
      query_fraction: share of the non-training images used as queries (0.2); the
        rest form the retrieval database.
      noise_rate: probability that a training pair's caption is replaced by the caption
        of a random training image of another class (CHNR experiments).
      noise_seed: seed of the noise injector.
      clean_fraction: share of training pairs that are never corrupted; CHNR also uses
        them as its trusted subset in phase 1.
    """

    dataset: str = "sentinel2_default"
    data_dir: str = ""
    caption_file: str = ""
    image_dir: str = ""
    label_file: str = ""
    split_seed: int = 42
    caption_seed: int = 42
    train_fraction: float = 0.5
    query_fraction: float = 0.2
    noise_rate: float = 0.0
    noise_seed: int = 0
    clean_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("dataset", self.dataset, DATASETS)
        _check_fraction("train_fraction", self.train_fraction, allow_zero=False)
        _check_fraction("query_fraction", self.query_fraction, allow_zero=False)
        _check_fraction("noise_rate", self.noise_rate, allow_zero=True, allow_one=True)
        _check_fraction("clean_fraction", self.clean_fraction, allow_zero=True)


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Frozen pretrained encoders and the feature store they fill.

    Attributes:
      image_encoder: `efficientnet_lite0` (offline default), `tiny_cnn` (tests), or a
        keras-hub / keras.applications name (`resnet18`, `resnet50`, ...).
      image_weights: `default` (the encoder's usual weights), a local file or folder,
        or `none` for random weights.
      text_encoder: `all_minilm_l6_v2` (offline default), `tiny_bert` (tests), a
        keras-hub preset name (`bert_base_en_uncased`) or a local preset folder.
      text_pooling: how token states become one vector, from `TEXT_POOLINGS`.
      image_size: side of the square the encoder sees.
      sequence_length: tokens per caption, padding included.
      extract_batch_size: encoder batch size.
      precision: Keras dtype policy used while extracting.
      augment_seed: seed of the offline augmented views.
      features: the feature store folder that training and evaluation read.
    """

    image_encoder: str = "efficientnet_lite0"
    image_weights: str = "default"
    text_encoder: str = "all_minilm_l6_v2"
    text_pooling: str = "masked_mean"
    image_size: int = 224
    sequence_length: int = 64
    extract_batch_size: int = 64
    precision: str = "float32"
    augment_seed: int = 0
    features: str = ""

    def __post_init__(self) -> None:
        _check_choice("text_pooling", self.text_pooling, TEXT_POOLINGS)
        _check_choice("precision", self.precision, PRECISIONS)
        for name in ("image_size", "sequence_length", "extract_batch_size"):
            _check_positive(name, getattr(self, name))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hash heads, losses and the CHNR noise detector.

    The loss weights are for *mean*-reduced terms. Left as None, the adversarial,
    quantisation and bit-balance weights are derived from the papers' batch-sum weights
    (a = 0.01, b = 0.001, g = 0.01 at batch 256) so that the balance of the authors' code
    is kept exactly: 0.01, 0.002 K and 0.02 K^2 for K bits (see
    `rs_hashing.models.cross_modal_hashing_model`).
    """

    method: str = "duch"
    bits: int = 64
    hidden_dim: int = 4096
    temperature: float = 1.0
    variant: str = "as_intended"
    contrastive_inter_weight: float = 1.0
    contrastive_intra_image_weight: float = 1.0
    contrastive_intra_text_weight: float = 1.0
    adversarial_weight: float | None = None
    quantization_weight: float | None = None
    bit_balance_weight: float | None = None
    gp_weight: float = 10.0
    noise_weighting: str = "threshold"
    chnr_loss: str = "chnr"
    detector_hidden: int = 1280
    detector_dropout: float = 0.2
    # Phase-1 detector also trained on the augmented views (4 view combinations, as the
    # authors' code; 4x the cost of a detector step).
    detector_augmented_views: bool = False

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("variant", self.variant, VARIANTS)
        _check_choice("noise_weighting", self.noise_weighting, NOISE_WEIGHTINGS)
        _check_choice("chnr_loss", self.chnr_loss, CHNR_LOSSES)
        if self.bits <= 0 or self.bits % 8:
            raise ValueError(f"bits={self.bits!r} must be a positive multiple of 8")
        _check_positive("hidden_dim", self.hidden_dim)
        _check_positive("temperature", self.temperature)
        _check_fraction("detector_dropout", self.detector_dropout, allow_zero=True)
        _check_positive("detector_hidden", self.detector_hidden)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation schedule (the papers': Adam 1e-4, batch 256, 100 epochs).

    CHNR runs `phase1_epochs` on the trusted clean subset (detector and hashing nets)
    and then `phase2_epochs` on the whole noisy training set; `epochs` is not used by
    it. The detector has its own AdamW (`detector_learning_rate`, decoupled
    `detector_weight_decay`; CHNR's 1e-4 and 1e-3).
    """

    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-4
    # The authors' coupled L2 (torch Adam weight_decay) on the hashing nets, for their
    # batch-sum loss at batch 256; the model applies weight_decay / 512 to our mean loss.
    weight_decay: float = 5e-4
    lr_decay: float = 0.8
    lr_decay_epochs: tuple[int, ...] = (1, 51)
    caption_mode: str = "one"
    phase1_epochs: int = 75
    phase2_epochs: int = 75
    detector_learning_rate: float = 1e-4
    detector_weight_decay: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 1
    workdir: str = ""

    def __post_init__(self) -> None:
        _check_choice("caption_mode", self.caption_mode, CAPTION_MODES)
        for name in ("epochs", "batch_size", "learning_rate", "checkpoint_every"):
            _check_positive(name, getattr(self, name))
        if any(e < 0 for e in self.lr_decay_epochs):
            raise ValueError(f"lr_decay_epochs={self.lr_decay_epochs!r} must be >= 0")
        for name in ("phase1_epochs", "phase2_epochs", "detector_weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        _check_positive("detector_learning_rate", self.detector_learning_rate)


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def _preset(**sections: Mapping[str, Any]) -> Config:
    return Config(**{name: _SECTION_TYPES[name](**values) for name, values in sections.items()})


_SECTION_TYPES = {"data": DataConfig, "features": FeatureConfig, "model": ModelConfig, "train": TrainConfig}

_KARPATHY = dict(split_seed=42, caption_seed=42, train_fraction=0.5, query_fraction=0.2)

PRESETS: dict[str, Config] = {
    # Unit tests and the end-to-end smoke test: tiny random encoders, a few epochs.
    "smoke": _preset(
        data=dict(dataset="sentinel2_default"),
        features=dict(image_encoder="tiny_cnn", image_weights="none", text_encoder="tiny_bert",
                      image_size=32, sequence_length=16, extract_batch_size=32),
        model=dict(bits=16, hidden_dim=64, detector_hidden=32),
        train=dict(epochs=3, batch_size=32, phase1_epochs=2, phase2_epochs=2, lr_decay_epochs=(1,)),
    ),
    # `make demo`: the embedded Sentinel-2 set with the real offline encoders.
    "demo": _preset(
        data=dict(dataset="sentinel2_default"),
        features=dict(image_size=224, sequence_length=48),
        model=dict(bits=64, hidden_dim=1024),
        train=dict(epochs=40, batch_size=64, lr_decay_epochs=(1, 21), learning_rate=3e-4),
    ),
    "rsicd": _preset(data=dict(dataset="rsicd", **_KARPATHY)),
    "ucm": _preset(data=dict(dataset="ucm", **_KARPATHY)),
    "sydney": _preset(data=dict(dataset="sydney", **_KARPATHY)),
    "rsitmd": _preset(data=dict(dataset="rsitmd", **_KARPATHY)),
    "nwpu": _preset(data=dict(dataset="nwpu", **_KARPATHY)),
    "csv": _preset(data=dict(dataset="csv")),
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _field_index() -> dict[str, list[str]]:
    """Maps each field name to the sections that have it."""
    index: dict[str, list[str]] = {}
    for section, cls in _SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            index.setdefault(f.name, []).append(section)
    return index


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Checks a value against a field's annotation, with the safe int->float widening."""
    hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing), {})  # noqa: S307
    args = typing.get_args(hint)
    if type(None) in args:  # `float | None`: None, or a value of the other type.
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{key}={value!r} must be a bool")
        return value
    if hint in (int, float, str):
        if not isinstance(value, hint) or isinstance(value, bool):
            raise TypeError(f"{key}={value!r} must be of type {hint.__name__}")
        return value
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{key}={value!r} must be a list of integers") from e
    return value


def apply_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """Returns `config` with single fields replaced.

    Keys are `section.field` (`model.bits`) or a bare field name (`bits`) when exactly
    one section has it. Unknown or ambiguous keys and wrongly typed values raise, so a
    misspelt flag can never be ignored.
    """
    index = _field_index()
    changes: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if "." in key:
            section, name = key.split(".", 1)
            if section not in _SECTION_TYPES or section not in index.get(name, []):
                raise KeyError(f"unknown config key {key!r}")
        else:
            sections = index.get(key)
            if not sections:
                raise KeyError(f"unknown config key {key!r}; known keys: {', '.join(sorted(index))}")
            if len(sections) > 1:
                options = ", ".join(f"{s}.{key}" for s in sections)
                raise KeyError(f"config key {key!r} is ambiguous; use one of {options}")
            section, name = sections[0], key
        field = {f.name: f for f in dataclasses.fields(_SECTION_TYPES[section])}[name]
        changes.setdefault(section, {})[name] = _coerce(key, value, field.type)
    replaced = {s: dataclasses.replace(getattr(config, s), **c) for s, c in changes.items()}
    return dataclasses.replace(config, **replaced)


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


def from_dict(values: Mapping[str, Mapping[str, Any]]) -> Config:
    """Inverse of `to_dict`; unknown sections or fields raise."""
    unknown = set(values) - set(_SECTION_TYPES)
    if unknown:
        raise KeyError(f"unknown config sections: {', '.join(sorted(unknown))}")
    flat = {f"{s}.{k}": v for s, section in values.items() for k, v in section.items()}
    return apply_overrides(Config(), flat)


def save_config(config: Config, workdir: str) -> str:
    """Writes `workdir/config.json` (atomically) and returns its path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(to_dict(config), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_config(path: str) -> Config:
    """Reads a `config.json` written by `save_config` (a file or its folder)."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no config.json (is this a run directory?)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return from_dict(values)


# Fields whose values are restricted to a set of names (entry points make them enums).
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS, "method": METHODS, "variant": VARIANTS, "caption_mode": CAPTION_MODES,
    "noise_weighting": NOISE_WEIGHTINGS, "chnr_loss": CHNR_LOSSES, "text_pooling": TEXT_POOLINGS,
    "precision": PRECISIONS,
}


def flag_specs() -> list[tuple[str, str, Any, str]]:
    """(name, kind, choices, help) for every config field, for entry points to define
    flags from; every flag defaults to None so that only flags given override."""
    specs = []
    for section, cls in _SECTION_TYPES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if type(None) in typing.get_args(hint):
                hint = next(a for a in typing.get_args(hint) if a is not type(None))
            if f.name in CHOICES:
                kind = "enum"
            elif hint is bool:
                kind = "bool"
            elif hint is int:
                kind = "integer"
            elif hint is float:
                kind = "float"
            elif typing.get_origin(hint) is tuple:
                kind = "list"
            else:
                kind = "string"
            specs.append((f.name, kind, CHOICES.get(f.name), f"Overrides {section}.{f.name} "
                          f"(preset value otherwise)."))
    return specs


# Defaults that depend on the method, for fields that neither the preset (left at the
# dataclass default) nor a flag set. CHNR needs a trusted clean subset: 20% of the
# training pairs, as the paper's RSICD setting (UCM used 30%; pass --clean_fraction).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {"chnr": {"clean_fraction": 0.2}}


def apply_method_defaults(config: Config, given: Any = ()) -> Config:
    """`config` with the `METHOD_DEFAULTS` of its method filled in, except for the keys
    in `given` (bare or `section.field`) and fields the preset already changed."""
    index = _field_index()
    changes = {}
    for key, value in METHOD_DEFAULTS.get(config.model.method, {}).items():
        section = index[key][0]
        if key in given or f"{section}.{key}" in given:
            continue
        if getattr(getattr(config, section), key) == getattr(_SECTION_TYPES[section](), key):
            changes[f"{section}.{key}"] = value
    return apply_overrides(config, changes) if changes else config


def config_from_flags(preset: str, flag_values: Mapping[str, Any]) -> Config:
    """The preset with every config flag that was given (not None) applied, then the
    method's defaults (`METHOD_DEFAULTS`) for fields left untouched."""
    known = {name for name, *_ in flag_specs()}
    overrides = {k: v for k, v in flag_values.items() if k in known and v is not None}
    return apply_method_defaults(apply_overrides(get_preset(preset), overrides), given=set(overrides))
