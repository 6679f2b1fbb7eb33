r"""Feature extraction speed and feature quality on RSICD-AID.

    python -m benchmarks.extraction_benchmark --data_dir=../shared/data/rsicd \
        --features=/path/to/rsicd_store [--images=512]

Prints, for this machine:
  * the extractor's image throughput (original + augmented views, decode and augment
    included) against the bare backbone's `predict` on the same, preloaded batches, in
    the same process: the ratio is the pipeline's overhead (goal >= 0.9x);
  * caption throughput of the text encoder (unique captions, length-bucketed);
  * 1-nearest-neighbour scene-class accuracy of image features and of caption features
    (cosine, the protocol's training images as references, its query images as queries).
"""

import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from rs_hashing import config as config_lib
from rs_hashing.data.loaders import load_dataset
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.encoders.frozen_encoders import FrozenEncoders
from rs_hashing.features.feature_extractor import FeatureExtractor
from rs_hashing.features.feature_store import FeatureStore
from rs_hashing.features.image_pipeline import load_image

flags.DEFINE_string("data_dir", None, "RSICD-AID folder (dataset_rsicd.json + RSICD_images).", required=True)
flags.DEFINE_string("features", None, "Feature store of the full dataset, for the 1-NN figures.")
flags.DEFINE_integer("images", 512, "Images timed for throughput.")
flags.DEFINE_integer("captions", 2000, "Captions timed for throughput.")
flags.DEFINE_integer("batch_size", 64, "Encoder batch size.")
FLAGS = flags.FLAGS


def one_nn_accuracy(references, reference_labels, queries, query_labels) -> float:
    """Cosine 1-NN classification accuracy."""
    def unit(x):
        x = np.asarray(x, np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    nearest = np.argmax(unit(queries) @ unit(references).T, axis=1)
    return float(np.mean(reference_labels[nearest] == query_labels))


def main(argv):
    del argv
    config = config_lib.apply_overrides(config_lib.get_preset("rsicd"), {
        "data_dir": FLAGS.data_dir, "encode_batch_size": FLAGS.batch_size})
    dataset = load_dataset(config.data)
    encoders = FrozenEncoders(config.features)
    image_encoder = encoders.image
    size = config.features.image_size
    results = {"machine_cores": os.cpu_count(), "batch_size": FLAGS.batch_size}

    # Bare backbone: preloaded pixel batches, keras predict (no decoding, no augmentation).
    paths = [dataset.image_path(i) for i in range(FLAGS.images)]
    pixels = np.stack([load_image(tf.constant(p), size).numpy() for p in paths])
    image_encoder.predict(pixels[:FLAGS.batch_size], batch_size=FLAGS.batch_size, verbose=0)  # warm-up
    start = time.perf_counter()
    image_encoder.predict(pixels, batch_size=FLAGS.batch_size, verbose=0)
    bare = len(pixels) / (time.perf_counter() - start)

    # The extractor on the same images: read + decode + augment + resize + encode, 2 views.
    from rs_hashing.data.image_augmenter import ImageAugmenter  # pylint: disable=import-outside-toplevel
    extractor = FeatureExtractor(image_encoder, None, size, ImageAugmenter().augment, lambda c, i: c,
                                 batch_size=FLAGS.batch_size, progress=False)
    extractor._image_shard(dataset, 0, FLAGS.batch_size)  # warm-up (traces the encoder)
    start = time.perf_counter()
    extractor._image_shard(dataset, 0, FLAGS.images)
    piped = 2 * FLAGS.images / (time.perf_counter() - start)
    results.update({"bare_predict_images_per_s": round(bare, 1),
                    "extractor_images_per_s": round(piped, 1),
                    "extractor_vs_bare": round(piped / bare, 3)})

    text_encoder = encoders.text
    texts = sorted(set(dataset.flat_captions()[0]))[:FLAGS.captions]
    text_encoder.encode(texts[:128])  # warm-up
    start = time.perf_counter()
    text_encoder.encode(texts, batch_size=256)
    results["captions_per_s"] = round(len(texts) / (time.perf_counter() - start), 1)

    if FLAGS.features:
        store = FeatureStore.open(FLAGS.features, dataset)
        split = ProtocolSplit.for_dataset(dataset, config.data)
        labels = np.asarray(store.labels)
        offsets = np.asarray(store.caption_offsets)
        results["1nn_image_accuracy"] = round(one_nn_accuracy(
            store.image[split.train], labels[split.train], store.image[split.query], labels[split.query]), 4)
        train_text = split.chosen_caption_index(offsets, split.train)
        query_text = split.chosen_caption_index(offsets, split.query)
        results["1nn_caption_accuracy"] = round(one_nn_accuracy(
            store.text[train_text], labels[split.train], store.text[query_text], labels[split.query]), 4)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    app.run(main)
