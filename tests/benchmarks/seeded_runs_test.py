"""benchmarks.seeded_runs: a config's flags rebuild it in a child process, and a finished
run is reused."""

import os

import pytest

from benchmarks import seeded_runs
from rs_hashing import config as config_lib
from tests.training import tiny_store


def test_seeds_and_overrides():
    assert seeded_runs.seeds(3) == [42, 43, 44]
    with pytest.raises(ValueError, match="at least one seed"):
        seeded_runs.seeds(0)
    config = config_lib.apply_overrides(config_lib.get_preset("rsicd"), seeded_runs.seed_overrides(7, True))
    assert (config.data.split_seed, config.data.caption_seed, config.data.noise_seed, config.train.seed,
            config.data.val_seed, config.data.val_fraction) == (7, 7, 7, 7, 7, 0.2)


def test_mean_sd_and_cells():
    assert seeded_runs.mean_sd([0.8, 0.9, 1.0]) == pytest.approx((0.9, 0.1))
    assert seeded_runs.cell([0.8, 0.9, 1.0]) == "0.900 +- 0.100"
    assert seeded_runs.cell([0.85]) == "0.850"
    assert seeded_runs.cell([]) == "-"
    runs = {1: {"map@20": {"i2t": 0.5}}, 2: {"map@20": {}}, 3: {"map@20": {"i2t": 0.7}}}
    assert seeded_runs.collect(runs, lambda m: m["map@20"]["i2t"]) == [0.5, 0.7]


def test_flags_name_only_the_differences():
    base = config_lib.get_preset("rsicd")
    config = config_lib.apply_overrides(base, {"temperature": 0.5, "lr_decay_epochs": (1, 51, 101),
                                               "jit_compile": True, "bits": 32})
    assert sorted(seeded_runs.config_flags(config, base)) == [
        "--bits=32", "--jit_compile", "--lr_decay_epochs=1,51,101", "--temperature=0.5"]


def test_a_run_trains_in_a_child_process_with_the_same_config_and_is_reused(tmp_path):
    data, features = tiny_store.make_store(tmp_path)
    run_dir = str(tmp_path / "run")
    config = config_lib.apply_overrides(
        tiny_store.store_config(data, features, run_dir, epochs=2),
        {**seeded_runs.seed_overrides(5), "temperature": 0.5, "caption_mode": "random"})
    metrics = seeded_runs.train_or_reuse(config, "smoke")
    assert config_lib.load_config(run_dir) == config  # every field came through the flags
    process = metrics["process"]
    assert process["wall_s"] > 0 and process["cpu_s"] > 0 and process["peak_rss_mb"] > 50
    assert 0 <= metrics["map@20"]["i2t"] <= 1
    stamp = os.path.getmtime(os.path.join(run_dir, "process.json"))
    again = seeded_runs.train_or_reuse(config, "smoke")  # finished: read, not trained
    assert os.path.getmtime(os.path.join(run_dir, "process.json")) == stamp
    assert again["map@20"] == metrics["map@20"]


def test_the_duch_benchmarks_default_row_is_the_presets_default():
    """The default's frozen stage trains exactly the benchmark's DEFAULT_RUN setting, and
    the papers' rows are not the default (checked in a child: the benchmark defines flags
    at import)."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    code = ("from rs_hashing import config as c; from rs_hashing.training import stages; "
            "from benchmarks import duch_benchmark as d; "
            "p = c.apply_overrides(c.get_preset('rsicd'), {'run_dir': 'r', 'features': 'f'}); "
            "frozen = stages.stage_configs(p).frozen; "
            "print(c.to_dict(c.apply_overrides(p, {**d.RUNS[d.DEFAULT_RUN], 'run_dir': 'r/frozen'})) "
            "== c.to_dict(frozen), c.to_dict(c.apply_overrides(p, d.RUNS['as_intended'])) == c.to_dict(p))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False"]


def test_a_finished_run_of_other_settings_is_refused_not_reused(tmp_path):
    base = config_lib.apply_overrides(config_lib.get_preset("rsicd"), {
        "run_dir": "/a/runs/x/seed42", "features": "/a/feats", "init_from": "/a/runs/duch/as_intended_64/seed42",
        "image_trainable_stages": 0})
    moved = config_lib.apply_overrides(base, {
        "run_dir": "runs/x/seed42", "features": "feats", "init_from": "runs/duch/as_intended_64/seed42"})
    # Paths, and the tops' factor of a frozen run (nothing reads it), do not count.
    assert seeded_runs.reuse_differences(moved, base) == []
    assert seeded_runs.reuse_differences(config_lib.apply_overrides(moved, {"tower_learning_rate_factor": 0.1}),
                                         base) == []
    # Nor the tuned epochs of a frozen run or of a continuation (older runs recorded none: 0).
    assert seeded_runs.reuse_differences(config_lib.apply_overrides(moved, {"tuned_epochs": 0}), base) == []
    continuation = config_lib.apply_overrides(base, {"image_trainable_stages": 1})
    assert seeded_runs.reuse_differences(config_lib.apply_overrides(continuation, {"tuned_epochs": 0}),
                                         continuation) == []
    two_stage = config_lib.apply_overrides(continuation, {"init_from": ""})
    assert seeded_runs.reuse_differences(config_lib.apply_overrides(two_stage, {"tuned_epochs": 5}), two_stage) == [
        "train.tuned_epochs: 10 there, 5 here"]
    tuned = config_lib.apply_overrides(base, {"image_trainable_stages": 1})
    assert seeded_runs.reuse_differences(config_lib.apply_overrides(tuned, {"tower_learning_rate_factor": 0.1}),
                                         tuned) == ["train.tower_learning_rate_factor: 10.0 there, 0.1 here"]
    other_source = config_lib.apply_overrides(base, {"init_from": "/a/runs/duch/as_intended_random_64/seed42"})
    assert [d.split(":")[0] for d in seeded_runs.reuse_differences(other_source, base)] == ["train.init_from"]
    assert seeded_runs.reuse_differences(config_lib.apply_overrides(base, {"temperature": 0.5}), base) == [
        "model.temperature: 1.0 there, 0.5 here"]
    # train_or_reuse refuses such a run before anything is trained.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recorded = config_lib.apply_overrides(base, {"run_dir": str(run_dir)})
    config_lib.save_config(recorded, str(run_dir))
    (run_dir / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"run: a finished run of other settings \(model.bits: 64 there, 32 here\)"):
        seeded_runs.train_or_reuse(config_lib.apply_overrides(recorded, {"bits": 32}), "rsicd")
    assert seeded_runs.train_or_reuse(recorded, "rsicd") == {"process": {}}


def test_a_chnr_run_records_its_methods_defaults_so_its_reuse_expects_them():
    chnr = config_lib.apply_overrides(config_lib.get_preset("rsicd"), {"method": "chnr"})
    assert seeded_runs.child_config(chnr, "rsicd").train.lr_decay_epochs == (1, 51, 101)
    two_steps = config_lib.apply_overrides(chnr, {"lr_decay_epochs": (1, 61)})
    assert seeded_runs.child_config(two_steps, "rsicd").train.lr_decay_epochs == (1, 61)  # given: kept
    duch = config_lib.get_preset("rsicd")
    assert seeded_runs.child_config(duch, "rsicd") == duch


def test_the_duch_benchmarks_speed_lines_compare_each_row_with_the_authors_of_its_bits():
    """Each row's wall time against the authors' runs of the same code length, and a
    two-stage row's training seconds per stage (in a child: the benchmark defines flags)."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    code = ("from benchmarks import duch_benchmark as d; "
            "p = lambda w: {'process': {'wall_s': w, 'cpu_s': w, 'peak_rss_mb': 1}}; "
            "r = {'default_64': {42: {**p(300.0), 'train_seconds': 100.0, 'frozen_stage': {'train_seconds': 150.0}}}, "
            "'as_intended_16': {42: p(50.0)}, 'authors_64': {42: p(100.0)}, 'authors_16': {42: p(200.0)}}; "
            "print('\\n'.join(d.speed_lines(r, {}, 10.0)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[1] == ("- default_64: wall 300 s, CPU 300 s, peak 1 MB; in training: frozen stage 150 s, tuned stage "
                        "100 s; 3.00x the authors' wall time")
    assert lines[2].endswith("; 0.25x the authors' wall time")
    assert "x the authors' wall time" not in lines[3] + lines[4]


def test_a_finished_two_stage_run_is_compared_stage_by_stage(tmp_path):
    """The default (two stages) is reused when its tuned stage (the folder) and its
    frozen stage (frozen/) recorded the stages of the config asked for."""
    from rs_hashing.training import stages  # pylint: disable=import-outside-toplevel

    run_dir = tmp_path / "default_64" / "seed42"
    config = config_lib.apply_overrides(config_lib.get_preset("rsicd"), {"run_dir": str(run_dir), "features": "f"})
    frozen, tuned = stages.stage_configs(config)
    config_lib.save_config(tuned, str(run_dir))
    (run_dir / "metrics.json").write_text("{}")
    assert seeded_runs.finished_differences(config, str(run_dir)) == [f"{run_dir}/frozen: no frozen stage"]
    config_lib.save_config(frozen, frozen.train.run_dir)
    assert seeded_runs.train_or_reuse(config, "rsicd") == {"process": {}}
    # Moved elsewhere: paths do not count.
    moved = config_lib.apply_overrides(config, {"features": "/elsewhere/f"})
    assert seeded_runs.finished_differences(moved, str(run_dir)) == []
    with pytest.raises(ValueError, match=r"other settings \(train.epochs: 10 there, 5 here\)"):
        seeded_runs.train_or_reuse(config_lib.apply_overrides(config, {"tuned_epochs": 5}), "rsicd")
    assert seeded_runs.finished_differences(config_lib.apply_overrides(config, {"epochs": 50}), str(run_dir)) == [
        "frozen stage train.epochs: 100 there, 50 here"]
