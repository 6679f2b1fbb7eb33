r"""Extracts frozen encoder features of a dataset into the feature stores training reads.

    rs-hashing extract-features --preset=rsicd --data_dir=../shared/data/rsicd \
        --features=feats/rsicd

With the defaults (a two-stage run: frozen heads, then EfficientNet-Lite0's last stage
tuned) this writes two stores: the frozen encoders' features at --features, and the
activations entering the trainable top at --tuned_features (--features with _image1
appended: feats/rsicd_image1), which takes the captions' arrays from the first.
--image_trainable_stages=0 writes the frozen store only.

Resumes a killed run (finished shards are kept); a finished store of the same data and
encoder settings is reused. Encoders, image size, encoder batch and precision are
config flags (--image_encoder, --text_encoder, --image_size, --encode_batch_size,
--precision, ...). With --tuned_epochs=0 and --image_trainable_stages or
--text_trainable_layers above 0 one store at --features caches the activations entering
the encoders' trainable tops instead of their features (--activation_dtype, float16 by
default); train with the same flags. --reuse_from=STORE[,STORE] takes the image or caption arrays of finished stores of the
same data and encoders whose encoders are cut as this store's on that side (a store
with both tops from one with the image top and one with the text top) instead of
encoding them again.
"""

import json
import os

from absl import flags

from rs_hashing.cli import config_flags
from rs_hashing.cli.errors import USER_ERRORS, exit_with_error
from rs_hashing.data.loaders import load_dataset
from rs_hashing.features.extraction import extract_run_stores

DEFAULT_PRESET = "demo"


def define_flags() -> list[str]:
    flags.DEFINE_list("reuse_from", [], "Finished feature stores of the same data and encoders whose image or caption "
                      "arrays this store would compute alike (the same cut on that side): taken, not encoded again.")
    return ["reuse_from"]


def main(argv):
    del argv
    try:
        config = config_flags.config_from_flags()
        out = config.features.features
        if not out:
            raise ValueError("--features is empty: give the feature store folder to write")
        dataset = load_dataset(config.data)
        print(dataset.summary(), flush=True)
        stores = extract_run_stores(config, dataset, reuse_from=flags.FLAGS.reuse_from)
    except USER_ERRORS as e:
        exit_with_error(e)
    for store in stores:
        path = store.path
        size_mb = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".npy")) / 2**20
        print(json.dumps({"store": path, "images": store.num_images, "captions": len(store.text),
                          "image_dim": store.image_dim, "text_dim": store.text_dim,
                          "store_mb": round(size_mb, 1), **({"towers": store.towers} if store.towers else {}),
                          **store.manifest.get("extraction", {})}, indent=2))
