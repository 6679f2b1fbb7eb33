"""Errors that name the file and the item at fault, raised before any heavy work."""


class DatasetError(ValueError):
    """A caption file, label file or image folder that cannot be used as given."""


class FeatureStoreError(ValueError):
    """A feature store that is missing, incomplete, corrupt or made for other data."""


class TrainingError(RuntimeError):
    """Training cannot continue (for example the loss became NaN)."""
