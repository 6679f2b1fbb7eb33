"""The `rs-hashing` command and its subcommands.

This is the one room of the package that defines absl flags and reads the command line,
and it does so only when a command runs (`main`, `run_command`), never at import. Each
subcommand is a module here with `DEFAULT_PRESET` (the config preset its config flags
start from, or None when it takes no config flags), `main(argv)` and, when it has flags
of its own, `define_flags()` (defines them, returns their names). The checkout's `python -m train.X` /
`python -m export.X` modules are thin aliases that call `run_command`.

TensorFlow's C++ start-up logging (oneDNN, CUDA probing, `cuInit` failures on machines
without a GPU) is kept quiet unless the user asks for it with `--verbosity` (`-v`) or
sets `TF_CPP_MIN_LOG_LEVEL` themselves.
"""

from __future__ import annotations

import collections
import importlib
import os
import sys
import tempfile

Command = collections.namedtuple("Command", ["module", "summary"])

COMMANDS: dict[str, Command] = {
    "demo": Command("demo", "the main job on the embedded Sentinel-2 default: extract, train, "
                            "evaluate, search, export"),
    "extract-features": Command("extract_features", "frozen encoder features of a dataset into a "
                                                    "feature store (resumable)"),
    "train": Command("train", "train DUCH or CHNR hash heads on a feature store and evaluate them"),
    "index": Command("index", "hash every image of a folder or dataset into a searchable index"),
    "search": Command("search", "search an index by a typed sentence or an image"),
    "serve": Command("serve", "a search page and JSON API over an index (typed and image queries)"),
    "export-savedmodel": Command("export_savedmodel", "a trained run as a SavedModel for TF Serving"),
    "export-tflite": Command("export_tflite", "a trained run's image (and text) encoder as TFLite"),
    "edge-encode": Command("edge_encode", "hash images with a TFLite file on a ground station "
                                          "(no TensorFlow needed)"),
}
# Commands that must not import TensorFlow, Keras or absl (the ground-station install).
NO_TENSORFLOW = ("edge-encode",)
HELP_ARGS = ("-h", "--help", "--helpshort", "-?")


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: rs-hashing COMMAND [--flag=value ...]", "",
             "Cross-modal hashing for remote-sensing archives: type a sentence, get the images "
             "that match.", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "`rs-hashing COMMAND --help` explains each command's flags."]
    return "\n".join(lines)


def _verbose(argv: list[str]) -> bool:
    return any(arg in ("-v", "--verbosity") or arg.startswith(("--verbosity=", "-v=")) for arg in argv)


def quiet_imports(argv: list[str], modules: list[str]) -> list:
    """Imports `modules` with TensorFlow's C++ start-up logging silenced (unless asked
    for) and returns them.

    `TF_CPP_MIN_LOG_LEVEL=3` silences what TensorFlow logs after it starts; what its
    libraries print while loading comes before any setting applies, so file descriptor
    2 is pointed at a temporary file during the import and the text is shown only if
    the import fails.
    """
    if _verbose(argv) or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return [importlib.import_module(name) for name in modules]
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            return [importlib.import_module(name) for name in modules]
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _preset_in(argv: list[str], default: str) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
        if arg == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
    return default


def run_command(name: str, argv: list[str] | None = None) -> int:
    """Runs one subcommand with its arguments (sys.argv[1:] by default); returns the
    exit status (absl commands exit through `app.run`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    program = f"rs-hashing {name}"
    if name in NO_TENSORFLOW:
        module = importlib.import_module(f"rs_hashing.cli.{COMMANDS[name].module}")
        return module.main(argv, prog=program)
    # TensorFlow's pooling CPU allocator instead of malloc: the 4096-wide heads' MB-sized
    # activations otherwise go to mmap and back every step (training: 544 -> 369 ms a
    # step on RSICD-AID, system time 40 -> 9 s in 5 epochs). Read when TensorFlow starts;
    # a user's own setting wins.
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    module, = quiet_imports(argv, [f"rs_hashing.cli.{COMMANDS[name].module}"])
    from absl import app  # pylint: disable=import-outside-toplevel

    from rs_hashing.cli import config_flags  # pylint: disable=import-outside-toplevel

    own = module.define_flags() if hasattr(module, "define_flags") else []
    preset = module.DEFAULT_PRESET
    config_names = config_flags.define_config_flags(preset) if preset else []
    if any(arg in HELP_ARGS for arg in argv):
        print(config_flags.format_help(program, module.__doc__ or "", own, config_names,
                                       _preset_in(argv, preset) if preset else None))
        return 0
    # Python-side INFO logging (TensorFlow's checkpoint notes, ...) stays quiet as well
    # unless --verbosity asks for it.
    quiet = [] if _verbose(argv) else ["--verbosity=-1"]
    app.run(module.main, argv=[program, *quiet, *argv], flags_parser=config_flags.parse_flags)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `rs-hashing` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in HELP_ARGS or argv[0] == "help":
        print(_usage())
        return 0
    if argv[0] == "--version":
        from rs_hashing import __version__  # pylint: disable=import-outside-toplevel

        print(f"rs-hashing {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} "
              "(rs-hashing --help)", file=sys.stderr)
        return 2
    try:
        return run_command(argv[0], argv[1:])
    except BrokenPipeError:  # `rs-hashing train --help | head`: the reader left; not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
