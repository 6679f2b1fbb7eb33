"""The config flags every command shares: `--preset` picks the base config, each other
flag overrides one field when given.

Each flag's help, allowed values and check come from the config field's declaration
(`rs_hashing.config.flag_specs`), so `--help` and the parse-time errors say the same
thing as the library's validation. Flags are defined only when a command calls
`define_config_flags`, never at import; TensorFlow is imported only by `seed_run`.
"""

from __future__ import annotations

import re
import sys
import textwrap
from typing import Any, Callable

from absl import flags

from rs_hashing import config as config_lib

WIDTH = 100
# Flags that point at a dataset's files; their layout comes from --preset or --dataset.
DATA_PATH_FLAGS = ("data_dir", "caption_file", "image_dir")
PRESET_HELP = "Base configuration; every config flag not given takes its value from it"

_DEFINE = {
    "integer": flags.DEFINE_integer,
    "float": flags.DEFINE_float,
    "bool": flags.DEFINE_bool,
    "string": flags.DEFINE_string,
    "list": flags.DEFINE_list,
}


def _allowed(spec: config_lib.FlagSpec) -> str:
    """The field's allowed values, saying integer or number where the check is a bound."""
    if spec.kind in ("integer", "float") and spec.allowed.startswith((">", "in ")):
        return f"{'an integer' if spec.kind == 'integer' else 'a number'} {spec.allowed}"
    return spec.allowed


def _validator(spec: config_lib.FlagSpec) -> Callable[[Any], bool]:
    """An absl validator that runs the field's type check and value check."""

    def validate(value: Any) -> bool:
        if value is None:  # Not given: the preset's value stands.
            return True
        try:
            config_lib.check_value(spec.section, spec.name, value)
        except (TypeError, ValueError) as e:
            raise flags.ValidationError(str(e)) from None
        return True

    return validate


def define_config_flags(default_preset: str) -> list[str]:
    """Defines `--preset` (default `default_preset`) and one flag per config field,
    each defaulting to None and checked when parsed. Names that are already defined
    are skipped; returns the names defined here."""
    defined = []
    if "preset" not in flags.FLAGS:
        flags.DEFINE_enum("preset", default_preset, list(config_lib.PRESETS),
                          f"{PRESET_HELP}. Allowed: one of {', '.join(config_lib.PRESETS)}.")
        defined.append("preset")
    for spec in config_lib.flag_specs():
        if spec.name in flags.FLAGS:
            continue
        help_text = f"{spec.help}. Allowed: {_allowed(spec)}."
        if spec.kind == "enum":
            flags.DEFINE_enum(spec.name, None, list(spec.choices), help_text)  # absl checks the choice.
        else:
            _DEFINE[spec.kind](spec.name, None, help_text)
            flags.register_validator(spec.name, _validator(spec))
        defined.append(spec.name)
    return defined


def _show(value: Any) -> str:
    """A default as a user would type it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):  # A config list field, in flag syntax.
        return ",".join(str(v) for v in value)
    if isinstance(value, list):  # A repeatable flag's defaults.
        return ", ".join(f'"{v}"' for v in value)
    if value == "":
        return "empty"
    return str(value)


def _entry(name: str, help_text: str, details: list[str], indent: int) -> str:
    # No line breaks inside a short detail (`>= 0`, `in (0, 1)`, `default: 64`): a
    # no-break space holds it together while wrapping.
    details = [re.sub(r"(^default:|[<>]=?|[(\[][\d.]+,) ", "\\1\u00a0", detail) for detail in details]
    text = f"--{name}: {help_text.rstrip('.')} ({'; '.join(details)})"
    return textwrap.fill(text, WIDTH, initial_indent=" " * indent, subsequent_indent=" " * (indent + 4),
                         break_long_words=False, break_on_hyphens=False).replace("\u00a0", " ")


def _command_flag_entry(name: str) -> str:
    flag = flags.FLAGS[name]
    details = [f"default: {_show(flag.default)}"]
    # absl decorates the help of enum (`<a|b>: `) and repeatable flags; the details say it.
    help_text = re.sub(r";\s*repeat this option to specify a list of values$", "", flag.help)
    choices = getattr(flag.parser, "enum_values", None)
    if choices:
        help_text = help_text.removeprefix(f"<{'|'.join(choices)}>: ")
        details.append(f"allowed: one of {', '.join(choices)}")
    return _entry(name, help_text, details, indent=2)


def format_help(program: str, description: str, command_flags: list[str], config_flags: list[str],
                preset: str | None) -> str:
    """The text a command prints for `--help`: usage, description, the command's own
    flags, then its config flags by section with the defaults of `preset`."""
    lines = [f"usage: {program} [--flag=value ...]"]
    if description.strip():
        lines += ["", description.strip()]  # A module docstring: already at column 0.
    if command_flags:
        lines += ["", "flags:"]
        lines += [_command_flag_entry(name) for name in command_flags]
    if not config_flags:
        return "\n".join(lines)
    if preset is None and "preset" in flags.FLAGS:
        preset = flags.FLAGS["preset"].default
    if preset in config_lib.PRESETS:
        base = config_lib.PRESETS[preset]
        header = f"config flags (values from preset '{preset}'; --preset picks another):"
    else:
        base = config_lib.Config()
        unknown = f"; preset '{preset}' is unknown" if preset else ""
        header = f"config flags (built-in defaults shown{unknown}):"
    lines += ["", header]
    if "preset" in config_flags:
        details = [f"default: {preset}", f"allowed: one of {', '.join(config_lib.PRESETS)}"]
        lines.append(_entry("preset", PRESET_HELP, details, indent=2))
    wanted = set(config_flags)
    section = None
    for spec in config_lib.flag_specs():
        if spec.name not in wanted:
            continue
        if spec.section != section:
            section = spec.section
            lines.append(f"  {section}:")
        default = getattr(getattr(base, spec.section), spec.name)
        details = [f"default: {_show(default)}", f"allowed: {_allowed(spec)}"]
        lines.append(_entry(spec.name, spec.help, details, indent=4))
    return "\n".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """A `flags_parser` for `absl.app.run`: parses `argv` into `flags.FLAGS`; a bad
    flag or value ends the program with one line on stderr and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = "; ".join(_with_allowed(line.strip()) for line in str(e).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _with_allowed(message: str) -> str:
    """absl's message for a config flag value it could not parse (`could not convert
    string to float`), with the field's allowed values added."""
    match = re.match(r"flag --(\w+)=", message)
    specs = {spec.name: spec for spec in config_lib.flag_specs()}
    if not match or match.group(1) not in specs or "allowed" in message or "one of" in message:
        return message
    return f"{message} (allowed: {_allowed(specs[match.group(1)])})"


def _defined_here() -> list[str]:
    """The config field flags that `define_config_flags` defined (absl records the
    defining module), so a command's own flag of the same name is never read as one."""
    return [f.name for f in flags.FLAGS.flags_by_module_dict().get(__name__, [])]


def _name_flag(error: Exception) -> str:
    """The error's message, with a leading `field=value` written as the flag `--field=value`."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    match = re.match(r"(\w+)=", message)
    if match and match.group(1) in {spec.name for spec in config_lib.flag_specs()}:
        return f"--{message}"
    return message


def config_from_flags() -> config_lib.Config:
    """The config of the parsed flags: `--preset`, every config flag given, then the
    method's defaults. Raises ValueError with a one-line message naming the flag.

    A dataset's path flags need to know its layout: given without an explicit
    `--preset` or `--dataset`, they are an error rather than a silent read of the
    default preset's (embedded) layout.
    """
    FLAGS = flags.FLAGS
    specs = {spec.name for spec in config_lib.flag_specs()}
    values = {name: FLAGS[name].value for name in _defined_here() if name in specs}
    paths = [name for name in DATA_PATH_FLAGS if values.get(name) is not None]
    preset_given = FLAGS["preset"].present or FLAGS.preset != FLAGS["preset"].default
    if paths and not preset_given and values.get("dataset") is None:
        layouts = [name for name, preset in config_lib.PRESETS.items()
                   if preset.data.dataset != config_lib.DataConfig().dataset]
        raise ValueError(f"--{paths[0]} needs --preset (one of {', '.join(layouts)}) or --dataset to say "
                         "which layout it is")
    try:
        return config_lib.config_from_flags(FLAGS.preset, values)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(_name_flag(e)) from None


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
