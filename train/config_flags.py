"""absl flags for every config field: `--preset` picks the base, each other flag
overrides one field when given. Shared by the entry points in train/ and export/."""

from absl import flags

from rs_hashing import config as config_lib

_DEFINE = {
    "integer": flags.DEFINE_integer,
    "float": flags.DEFINE_float,
    "bool": flags.DEFINE_bool,
    "string": flags.DEFINE_string,
    "list": flags.DEFINE_list,
}


def define_config_flags(default_preset: str = "demo") -> None:
    flags.DEFINE_enum("preset", default_preset, list(config_lib.PRESETS), "Base configuration.")
    for name, kind, choices, help_text in config_lib.flag_specs():
        if name in flags.FLAGS:
            continue
        if kind == "enum":
            flags.DEFINE_enum(name, None, list(choices), help_text)
        else:
            _DEFINE[kind](name, None, help_text)


def config_from_flags() -> config_lib.Config:
    values = {name: flags.FLAGS[name].value for name, *_ in config_lib.flag_specs()}
    return config_lib.config_from_flags(flags.FLAGS.preset, values)


def seed_run(config: config_lib.Config) -> None:
    """Global seeding for a training run (only entry points do this): Keras, numpy and
    Python from `train.seed`, and deterministic ops so a resumed run ends as an
    uninterrupted one."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    keras.utils.set_random_seed(config.train.seed)
    tf.config.experimental.enable_op_determinism()


def exit_with_error(error: Exception) -> None:
    """Ends an entry point with the library's one-line message instead of a stack trace."""
    raise SystemExit(f"error: {error}")
