"""The offline augmented image view of DUCH: Gaussian blur, small rotation, centre crop.

As in the authors' `aug_center` transform set: a Gaussian blur with a 3x3 kernel and sigma
drawn uniformly from [1.1, 1.3], then a rotation by an angle drawn uniformly from
[-10, -5] degrees (negative = clockwise, the torchvision and PIL convention), then a centre
crop. One augmented copy per image is made once, offline, and its features are stored
beside the original's.

Deliberate differences from the released code, each a parameter:
  - The crop. The authors cut a fixed 200x200 centre and let the feature extractor resize
    it; at 10 degrees a 224x224 image still shows black corners inside that crop. Here
    `crop_fraction=None` cuts, for each sampled angle, the largest centred crop with the
    image's aspect ratio that contains no filled corner, and resizes it back to the input
    size, so the output has the input's size and goes through the same feature
    preprocessing as the original view. A float fixes the fraction instead.
  - Rotation resamples bilinearly (torchvision's default was nearest neighbour).
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image


class ImageAugmenter:
    """Deterministic blur + rotation + centre-crop augmentation of uint8 RGB images.

    Args:
      seed: global seed; with `item_seed` it fixes the sampled sigma and angle.
      blur_sigma: (low, high) range of the Gaussian's standard deviation in pixels;
        (0, 0) disables the blur.
      rotation_degrees: (low, high) range of the angle, counter-clockwise positive.
      crop_fraction: None for the largest black-free centred crop of each rotated image,
        or a fixed fraction in (0, 1] of the height and width to keep.
      blur_kernel_size: odd kernel width (3 as the authors), or None for a kernel wide
        enough for the whole Gaussian (2 * ceil(3 sigma) + 1).

    Raises:
      ValueError: a malformed range, fraction or kernel size.
    """

    def __init__(self, seed: int = 0, blur_sigma: tuple[float, float] = (1.1, 1.3),
                 rotation_degrees: tuple[float, float] = (-10.0, -5.0),
                 crop_fraction: float | None = None, blur_kernel_size: int | None = 3) -> None:
        sigma_low, sigma_high = (float(v) for v in blur_sigma)
        if not 0.0 <= sigma_low <= sigma_high:
            raise ValueError(f"ImageAugmenter: blur_sigma={blur_sigma} must be 0 <= low <= high")
        angle_low, angle_high = (float(v) for v in rotation_degrees)
        if not -180.0 <= angle_low <= angle_high <= 180.0:
            raise ValueError(f"ImageAugmenter: rotation_degrees={rotation_degrees} must be "
                             "-180 <= low <= high <= 180")
        if crop_fraction is not None and not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"ImageAugmenter: crop_fraction={crop_fraction} is not in (0, 1]")
        if blur_kernel_size is not None and (blur_kernel_size < 1 or blur_kernel_size % 2 == 0):
            raise ValueError(f"ImageAugmenter: blur_kernel_size={blur_kernel_size} must be odd "
                             "and positive")
        self.seed = int(seed)
        self.blur_sigma = (sigma_low, sigma_high)
        self.rotation_degrees = (angle_low, angle_high)
        self.crop_fraction = crop_fraction
        self.blur_kernel_size = blur_kernel_size

    def get_config(self) -> dict:
        return {"seed": self.seed, "blur_sigma": self.blur_sigma,
                "rotation_degrees": self.rotation_degrees, "crop_fraction": self.crop_fraction,
                "blur_kernel_size": self.blur_kernel_size}

    def sample_params(self, item_seed: int) -> tuple[float, float]:
        """(blur sigma, rotation angle in degrees) used for item `item_seed`."""
        # String seeding hashes with SHA-512: stable across runs and platforms.
        rng = random.Random(f"image-augmenter:{self.seed}:{int(item_seed)}")
        sigma = rng.uniform(*self.blur_sigma)
        angle = rng.uniform(*self.rotation_degrees)
        return sigma, angle

    @staticmethod
    def black_free_crop_fraction(height: int, width: int, angle_degrees: float) -> float:
        """Largest s such that the centred s*height x s*width box fits in the rotated image.

        A corner (s*w/2, s*h/2) of the box, seen in the rotated image's frame, must stay
        within half the width and height: s (w cos t + h sin t) <= w and
        s (w sin t + h cos t) <= h, with t = |angle|.
        """
        t = math.radians(abs(angle_degrees))
        cos_t, sin_t = math.cos(t), math.sin(t)
        return min(1.0, width / (width * cos_t + height * sin_t),
                   height / (width * sin_t + height * cos_t))

    def _kernel(self, sigma: float) -> np.ndarray:
        size = self.blur_kernel_size or 2 * math.ceil(3 * sigma) + 1
        x = np.arange(size, dtype=np.float64) - (size - 1) / 2
        kernel = np.exp(-0.5 * (x / sigma) ** 2)
        return kernel / kernel.sum()

    def _blur(self, image: np.ndarray, sigma: float) -> np.ndarray:
        """Separable Gaussian blur with reflect padding (torchvision's GaussianBlur)."""
        if sigma == 0.0:
            return image
        kernel = self._kernel(sigma)
        radius = len(kernel) // 2
        height, width = image.shape[:2]
        padded = np.pad(image.astype(np.float64), ((radius, radius), (0, 0), (0, 0)),
                        mode="reflect")
        rows = sum(w * padded[k:k + height] for k, w in enumerate(kernel))
        padded = np.pad(rows, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
        out = sum(w * padded[:, k:k + width] for k, w in enumerate(kernel))
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def augment(self, image: np.ndarray, item_seed: int) -> np.ndarray:
        """Blurs, rotates and centre-crops `image`; the result has the input's shape.

        Args:
          image: uint8 array of shape [height, width, 3].
          item_seed: per-image seed (e.g. the image's index in the archive).

        Raises:
          ValueError: if `image` is not a uint8 [height, width, 3] array.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ValueError(f"ImageAugmenter.augment: item {item_seed}: expected a uint8 "
                             f"[height, width, 3] array, got shape {shape} dtype {dtype}")
        height, width = image.shape[:2]
        if min(height, width) < 4:
            raise ValueError(f"ImageAugmenter.augment: item {item_seed}: image {height}x{width} "
                             "is too small")
        sigma, angle = self.sample_params(item_seed)
        blurred = self._blur(image, sigma)
        rotated = Image.fromarray(blurred).rotate(
            angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=(0, 0, 0))
        if self.crop_fraction is None:
            fraction = self.black_free_crop_fraction(height, width, angle)
            # Two pixels less: bilinear sampling already mixes black into the border pixels.
            crop_w = max(1.0, fraction * width - 2.0) if fraction < 1.0 else float(width)
            crop_h = max(1.0, fraction * height - 2.0) if fraction < 1.0 else float(height)
        else:
            crop_w, crop_h = self.crop_fraction * width, self.crop_fraction * height
        box = ((width - crop_w) / 2, (height - crop_h) / 2,
               (width + crop_w) / 2, (height + crop_h) / 2)
        if crop_w == width and crop_h == height:
            return np.asarray(rotated, dtype=np.uint8).copy()
        resized = rotated.resize((width, height), resample=Image.Resampling.BILINEAR, box=box)
        return np.asarray(resized, dtype=np.uint8).copy()
