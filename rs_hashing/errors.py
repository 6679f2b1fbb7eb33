"""Errors that name the file and the item at fault, raised before any heavy work."""


class DatasetError(ValueError):
    """A caption file, label file or image folder that cannot be used as given."""


class FeatureStoreError(ValueError):
    """A feature store that is missing, incomplete, corrupt or made for other data."""


class TrainingError(RuntimeError):
    """Training cannot continue (for example the loss became NaN)."""


class RunFolderError(ValueError):
    """A run folder that is missing files or holds unreadable ones."""


class RunConflictError(RunFolderError):
    """A run folder that already holds (part of) a run of another configuration: a run
    folder is never changed once training started, unless a fresh run is asked for."""


class EncoderMismatchError(ValueError):
    """A run whose features came from other encoder weights than the ones installed now
    (another package version or weights fingerprint), so its codes cannot be reproduced."""
