r"""Extracts frozen encoder features of a dataset into a feature store.

    python -m train.extract_features --preset=rsicd --data_dir=../shared/data/rsicd \
        --out=/tmp/features/rsicd

Resumes a killed run (finished shards are kept). Encoders, image size, batch size and
precision are flags (--image_encoder, --text_encoder, --image_size,
--extract_batch_size, --precision, ...); every config field can be overridden.
"""

import json
import os

from absl import app, flags, logging

from rs_hashing.data.loaders import load_dataset
from rs_hashing.errors import DatasetError, FeatureStoreError
from rs_hashing.features.extraction import extract_features
from train import config_flags

flags.DEFINE_string("out", None, "Feature store folder to write (or resume).", required=True)
config_flags.define_config_flags(default_preset="demo")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    config = config_flags.config_from_flags()
    try:
        dataset = load_dataset(config.data)
        logging.info("%s", dataset.summary())
        print(dataset.summary(), flush=True)
        store, extractor = extract_features(config, dataset, FLAGS.out)
    except (DatasetError, FeatureStoreError, FileNotFoundError, ValueError) as e:
        config_flags.exit_with_error(e)
    report = store.manifest["extraction"]
    size_mb = sum(os.path.getsize(os.path.join(FLAGS.out, f)) for f in os.listdir(FLAGS.out)
                  if f.endswith(".npy")) / 2**20
    print(json.dumps({"store": FLAGS.out, "images": store.num_images, "captions": len(store.text),
                      "image_dim": store.image_dim, "text_dim": store.text_dim,
                      "store_mb": round(size_mb, 1), **report}, indent=2))


if __name__ == "__main__":
    app.run(main)
