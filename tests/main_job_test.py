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


def test_main_job_loads_the_dataset_once_and_builds_each_encoder_once(tmp_path, monkeypatch):
    import keras  # pylint: disable=import-outside-toplevel

    from rs_hashing import config as config_lib  # pylint: disable=import-outside-toplevel
    from rs_hashing import main_job  # pylint: disable=import-outside-toplevel
    from rs_hashing.encoders import frozen_encoders  # pylint: disable=import-outside-toplevel
    from rs_hashing.training import run_kit  # pylint: disable=import-outside-toplevel

    calls = {"dataset": 0, "image": 0, "text": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(main_job, "load_dataset", counting("dataset", main_job.load_dataset))
    monkeypatch.setattr(run_kit, "load_dataset", counting("dataset", run_kit.load_dataset))
    # The smoke preset's seeded tiny CNN is built directly (other encoders through
    # build_image_encoder): count both.
    monkeypatch.setattr(frozen_encoders, "build_image_encoder",
                        counting("image", frozen_encoders.build_image_encoder))
    monkeypatch.setattr(frozen_encoders, "TinyCNN", counting("image", frozen_encoders.TinyCNN))
    monkeypatch.setattr(frozen_encoders.TextEncoder, "tiny", counting("text", frozen_encoders.TextEncoder.tiny))
    keras.utils.set_random_seed(0)
    config = config_lib.apply_overrides(config_lib.get_preset("smoke"), {"epochs": 1})
    summary = main_job.run_main_job(config, str(tmp_path / "demo"), ["a sandy beach"], verbose=0)
    assert calls == {"dataset": 1, "image": 1, "text": 1}
    assert summary["located"]["tiles"] > 0 and summary["search"][0]["query"] == "a sandy beach"
