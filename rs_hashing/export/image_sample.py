"""Images (and a caption each) on which exports are measured and int8 is calibrated."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from rs_hashing import config as config_lib
from rs_hashing.data.loaders import load_dataset
from rs_hashing.edge.edge_encoder import find_images


@dataclasses.dataclass(frozen=True)
class ImageSample:
    """Image files, one caption per image when known, and where they came from.

    Attributes:
        paths: image files.
        captions: the first caption of each image, or empty.
        source: a description for reports ("RSICD-AID: 200 images of ...").
    """

    paths: tuple[str, ...]
    captions: tuple[str, ...] = ()
    source: str = "given images"

    def __post_init__(self) -> None:
        if self.captions and len(self.captions) != len(self.paths):
            raise ValueError(f"{len(self.paths)} images but {len(self.captions)} captions")

    @classmethod
    def from_files(cls, paths: Sequence[str]) -> "ImageSample":
        """Files as given, folders expanded to their image files (no captions)."""
        found = tuple(find_images(paths))
        return cls(found, source=f"given images: {len(found)}")

    @classmethod
    def from_dataset(cls, data: config_lib.DataConfig, count: int, offset: float = 0.0,
                     name: str | None = None) -> "ImageSample":
        """`count` images spread evenly over a caption dataset (any layout the loaders
        read), with their first captions. `offset` in [0, 1) shifts the picks, so two
        offsets give disjoint samples (measurement and calibration) when count is well
        below the dataset size.

        Raises:
            FileNotFoundError, DatasetError: the dataset is missing or unreadable.
            ValueError: count < 1 or offset outside [0, 1).
        """
        if count < 1 or not 0.0 <= offset < 1.0:
            raise ValueError(f"count={count} must be >= 1 and offset={offset} in [0, 1)")
        dataset = load_dataset(data, check_images=False)
        n = len(dataset)
        picks = min(count, n)
        indices = sorted({min(n - 1, int((i + offset) * n / picks)) for i in range(picks)})
        where = data.caption_file or data.data_dir or dataset.name
        return cls(paths=tuple(dataset.image_path(i) for i in indices),
                   captions=tuple(dataset.captions[i][0] for i in indices),
                   source=f"{name or dataset.name}: {len(indices)} images of {where}")
