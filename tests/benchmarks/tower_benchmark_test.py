"""The tower benchmark's store flags and its 1-NN image accuracy."""

import numpy as np
import pytest
from absl import app

from benchmarks import tower_benchmark
from rs_hashing.data import loaders
from rs_hashing.data.protocol_split import ProtocolSplit
from rs_hashing.features.feature_store import FeatureStore
from rs_hashing.training import duch
from tests.training.tiny_store import make_store, store_config


def test_stores_are_name_colon_folder_of_known_settings():
    assert tower_benchmark.parse_stores(["frozen:feats/a", "image1:/x/b"]) == {"frozen": "feats/a",
                                                                               "image1": "/x/b"}
    for bad in (["feats/a"], ["image9:feats/a"], ["frozen:"]):
        with pytest.raises(app.UsageError, match="is not name:folder"):
            tower_benchmark.parse_stores(bad)


def test_tuned_runs_are_named_by_their_tops_learning_rate_factor():
    assert tower_benchmark.run_name("image1", 10.0, 10) == "image1_lr10_+10"
    assert tower_benchmark.run_name("text1", 0.1, 5) == "text1_lr0.1_+5"
    assert tower_benchmark.run_name("frozen", None, 10) == "frozen_+10"
    assert tower_benchmark.run_name("image1", 1.0, 10) != tower_benchmark.run_name("image1", 10.0, 10)


def test_one_nn_accuracy_of_a_frozen_run_is_the_stores_nearest_neighbour_by_cosine(tmp_path):
    data, features = make_store(tmp_path / "data")
    config = store_config(data, features, str(tmp_path / "run"), epochs=1)
    duch.train(config, verbose=0)
    dataset = loaders.load_dataset(data, check_images=False)
    store = FeatureStore.open(features, dataset)
    split = ProtocolSplit.for_dataset(dataset, config.data)
    # By hand: each query image's most cosine-similar database image, one at a time.
    hits = []
    for q in split.query:
        a = np.asarray(store.image[q], np.float64)
        similarities = [a @ np.asarray(store.image[d]) / np.linalg.norm(a) / np.linalg.norm(store.image[d])
                        for d in split.database]
        hits.append(store.labels[split.database[int(np.argmax(similarities))]] == store.labels[q])
    expected = float(np.mean(hits))
    assert 0 < expected < 1  # noisy classes: a value that tells right from wrong
    assert tower_benchmark.one_nn_accuracy(config.train.run_dir, config) == pytest.approx(expected)


def test_untuned_tops_on_a_float32_cache_give_the_frozen_runs_map(tmp_path):
    from rs_hashing.features.extraction import extract_features  # pylint: disable=import-outside-toplevel
    from tests.training.tiny_store import make_image_archive, tower_config  # pylint: disable=import-outside-toplevel

    data = make_image_archive(tmp_path / "archive")
    frozen = tower_config(data, tmp_path / "frozen", stages=0, layers=0, epochs=3)
    tower = tower_config(data, tmp_path / "tower", stages=1, layers=1, activation_dtype="float32")
    for config in (frozen, tower):
        extract_features(config, loaders.load_dataset(config.data), config.features.features, progress=False)
    results = duch.train(frozen, verbose=0)
    untuned = tower_benchmark.untuned_map(frozen.train.run_dir, tower)
    for task, value in results["map@20"].items():
        assert untuned[task] == pytest.approx(value, abs=0.02), task

