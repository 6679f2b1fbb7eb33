import types

import numpy as np

from rs_hashing import metrics
from rs_hashing.main_job import search_by_text
from tests import tiny_run


def test_search_by_text_ranks_like_the_numpy_reference(tmp_path):
    model = tiny_run.tiny_model(str(tmp_path / "run"))
    rng = np.random.default_rng(0)
    store = types.SimpleNamespace(image=rng.normal(size=(60, tiny_run.FEATURE_DIM)).astype(np.float32))
    dataset = types.SimpleNamespace(filenames=tuple(f"img_{i}.png" for i in range(60)),
                                    class_names=("beach", "forest"), labels=np.arange(60) % 2)
    queries = ["a sandy beach", "green forest"]
    found = search_by_text(queries, model, store, dataset, top_k=7)
    query_codes = np.where(model.text_hash(queries) >= 0, 1, -1)
    archive_codes = np.where(np.asarray(model.heads.encode_image(store.image)) >= 0, 1, -1)
    ranking = metrics.rank_database(query_codes, archive_codes)[:, :7]
    distances = metrics.hamming_distance(query_codes, archive_codes)
    for i, result in enumerate(found):
        assert result["query"] == queries[i]
        assert result["results"] == [
            {"image": f"img_{j}.png", "class": ("beach", "forest")[j % 2],
             "hamming": int(distances[i, j])} for j in ranking[i]]
