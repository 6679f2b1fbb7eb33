"""The errors a command reports as one line (`error: ...`) instead of a traceback."""

from rs_hashing.errors import DatasetError, FeatureStoreError, RunFolderError, TrainingError

# Everything the library raises for bad input names the file or value at fault.
USER_ERRORS = (DatasetError, FeatureStoreError, RunFolderError, TrainingError, FileNotFoundError,
               FileExistsError, IsADirectoryError, ValueError, KeyError, TypeError)


def exit_with_error(error: BaseException) -> None:
    """Ends a command with the library's one-line message, exit status 1."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    raise SystemExit(f"error: {message}")
