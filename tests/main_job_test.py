import types

import keras
import numpy as np

from rs_hashing import metrics
from rs_hashing.features.extraction import build_text_encoder
from rs_hashing.main_job import search_by_text
from rs_hashing.models.cross_modal_hashing_model import CrossModalHashingModel
from rs_hashing.training import evaluation
from tests import testing


def test_search_by_text_ranks_like_the_numpy_reference():
    config = testing.tiny_config()
    model = CrossModalHashingModel(image_dim=12, text_dim=16, bits=8, hidden_dim=16, num_train=4,
                                   seed=0)
    rng = np.random.default_rng(0)
    store = types.SimpleNamespace(image=rng.normal(size=(60, 12)).astype(np.float32))
    dataset = types.SimpleNamespace(filenames=tuple(f"img_{i}.png" for i in range(60)),
                                    class_names=("beach", "forest"), labels=np.arange(60) % 2)
    queries = ["a sandy beach", "green forest"]
    keras.utils.set_random_seed(1)  # the same random tiny text encoder in both calls
    found = search_by_text(queries, config, model, store, dataset, top_k=7)
    keras.utils.set_random_seed(1)
    query_codes = evaluation.binarize(model.encode_text(build_text_encoder(config.features).encode(queries)))
    archive_codes = evaluation.binarize(model.encode_image(store.image))
    ranking = metrics.rank_database(query_codes, archive_codes)[:, :7]
    distances = metrics.hamming_distance(query_codes, archive_codes)
    for i, result in enumerate(found):
        assert result["query"] == queries[i]
        assert result["results"] == [
            {"image": f"img_{j}.png", "class": ("beach", "forest")[j % 2],
             "hamming": int(distances[i, j])} for j in ranking[i]]
