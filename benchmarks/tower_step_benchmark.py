"""Training-step cost of tower mode against frozen features, on RSICD-AID's shapes.

Before extracting a tower store (minutes to hours on a small machine) and training
100 epochs with it, this measures what one training step costs with the real
pretrained tops (EfficientNet-Lite0's last N stages and 1x1 head convolution, MiniLM's
last L transformer layers), on random activations of the shapes the store would cache:
7 x 7 x 192 at N = 1 for the image, RSICD's longest caption in MiniLM tokens for the
text (measured here from the captions). A setting with a trainable text top is timed
twice: with every batch at the store's cached length (the longest caption) and at
the median batch's longest caption, the length training batches are cut to
(`TrainingPairs.batch`). Each setting is timed in this one process, one after
another, and reported as ms a step, the projected 100-epoch training time at
RSICD-AID's training set, and the ratio to the frozen heads::

    python -m benchmarks.tower_step_benchmark --data_dir=../shared/data/rsicd

The projection is training steps only (no evaluation, no checkpoints); the issue's
wall-time target is checked by the 100-epoch runs themselves.
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

flags.DEFINE_string("data_dir", None, "RSICD-AID folder (for the captions' token lengths).", required=True)
flags.DEFINE_list("settings", ["0:0", "1:0", "0:1", "1:1", "2:0", "0:2"],
                  "image_trainable_stages:text_trainable_layers pairs; 0:0 = frozen (the baseline).")
flags.DEFINE_integer("steps", 5, "Timed steps per setting (after 2 warm-up steps).")
flags.DEFINE_integer("train_pairs", 5000, "Training pairs of an epoch (RSICD-AID: 5,000).")
flags.DEFINE_integer("epochs", 100, "Epochs to project to.")
FLAGS = flags.FLAGS


def caption_lengths(config, data_dir: str) -> np.ndarray:
    """MiniLM token counts of every caption of the dataset (specials included)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from rs_hashing.data import loaders  # pylint: disable=import-outside-toplevel
    from rs_hashing.encoders.frozen_encoders import FrozenEncoders  # pylint: disable=import-outside-toplevel

    from rs_hashing import config as config_lib  # pylint: disable=import-outside-toplevel

    config = config_lib.apply_overrides(config, {"data_dir": data_dir})
    dataset = loaders.load_dataset(config.data, check_images=False)
    texts = [caption for captions in dataset.captions for caption in captions]
    tokenizer = FrozenEncoders(config.features).text
    lengths = []
    for start in range(0, len(texts), 4096):
        tokens = tokenizer.tokenize(tf.constant(texts[start:start + 4096]))
        lengths.append(np.asarray(tf.reduce_sum(tokens["padding_mask"], axis=1)))
    return np.concatenate(lengths)


def step_ms(config, image_stages: int, text_layers: int, longest: int, steps: int) -> tuple[float, dict]:
    """Median ms of a train step at the config's batch size, and the tops' sizes."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from rs_hashing import config as config_lib  # pylint: disable=import-outside-toplevel
    from rs_hashing.encoders.encoder_towers import EncoderTowers  # pylint: disable=import-outside-toplevel
    from rs_hashing.training import run_kit  # pylint: disable=import-outside-toplevel

    config = config_lib.apply_overrides(config, {"image_trainable_stages": image_stages,
                                                 "text_trainable_layers": text_layers})
    towers = EncoderTowers.of_config(config)
    image_top, text_top = towers.image_top(), towers.text_top()
    batch_size = config.train.batch_size
    rng = np.random.default_rng(0)
    batch = {"index": np.arange(batch_size, dtype="int32")}
    if image_top is not None:
        shape = tuple(image_top.input_shape[1:])
        image_dim = int(image_top.output_shape[-1])
        for view in ("image", "image_aug"):
            batch[view] = rng.normal(size=(batch_size, *shape)).astype("float32")
    else:
        image_dim = int(towers.encoders.image.output_shape[-1])
        for view in ("image", "image_aug"):
            batch[view] = rng.normal(size=(batch_size, image_dim)).astype("float32")
    if text_top is not None:
        hidden = int(text_top.input["states"].shape[-1])
        text_dim = int(text_top.output_shape[-1])
        for view in ("text", "text_aug"):
            batch[view] = rng.normal(size=(batch_size, longest, hidden)).astype("float32")
            lengths = rng.integers(5, longest + 1, size=batch_size)
            batch[f"{view}_mask"] = (np.arange(longest)[None] < lengths[:, None]).astype("int32")
    else:
        text_dim = towers.encoders.text.output_dim
        for view in ("text", "text_aug"):
            batch[view] = rng.normal(size=(batch_size, text_dim)).astype("float32")
    model = run_kit.build_model(config, image_dim, text_dim, batch_size,
                                image_tower=image_top, text_tower=text_top)
    run_kit.compile_model(model, config)
    step = tf.function(model.train_step)
    tensors = {name: tf.constant(value) for name, value in batch.items()}
    for _ in range(2):
        step(tensors)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        values = step(tensors)
        float(values["loss"])
        times.append(time.perf_counter() - started)
    sizes = {name: int(sum(np.prod(v.shape) for v in top.trainable_variables))
             for name, top in (("image", image_top), ("text", text_top)) if top is not None}
    del model
    keras.backend.clear_session()
    return 1000 * float(np.median(times)), sizes


def main(argv):
    del argv
    from rs_hashing import config as config_lib  # pylint: disable=import-outside-toplevel

    config = config_lib.get_preset("rsicd")
    lengths = caption_lengths(config, FLAGS.data_dir)
    longest = int(min(lengths.max(), config.features.sequence_length))
    print(f"captions: {len(lengths)}, MiniLM tokens mean {lengths.mean():.1f}, longest {lengths.max()} "
          f"(cached length {longest})")
    rng = np.random.default_rng(0)
    batch_longest = int(np.median([rng.choice(lengths, config.train.batch_size).max() for _ in range(200)]))
    print(f"median longest caption of a batch of {config.train.batch_size}: {batch_longest} tokens")
    steps_per_epoch = -(-FLAGS.train_pairs // config.train.batch_size)
    rows, baseline = [], None
    for setting in FLAGS.settings:
        image_stages, text_layers = (int(v) for v in setting.split(":"))
        for tokens in ([longest, batch_longest] if text_layers else [None]):
            ms, sizes = step_ms(config, image_stages, text_layers, tokens or longest, FLAGS.steps)
            baseline = baseline if baseline is not None else ms
            minutes = ms * steps_per_epoch * FLAGS.epochs / 60000
            rows.append((image_stages, text_layers, tokens, ms, minutes, ms / baseline, sizes))
            print(f"image stages {image_stages}, text layers {text_layers}"
                  f"{f' at {tokens} tokens' if tokens else ''}: {ms:.0f} ms a step, {minutes:.1f} min for "
                  f"{FLAGS.epochs} epochs, {ms / baseline:.2f}x frozen, trainable top parameters {sizes}", flush=True)
    print("\n| image stages | text layers | text tokens a batch | ms a step | training min, 100 epochs | x frozen | "
          "top parameters |")
    print("|---|---|---|---|---|---|---|")
    for image_stages, text_layers, tokens, ms, minutes, ratio, sizes in rows:
        described = ", ".join(f"{k} {v:,}" for k, v in sizes.items()) or "-"
        print(f"| {image_stages} | {text_layers} | {tokens or '-'} | {ms:.0f} | {minutes:.1f} | {ratio:.2f} | "
              f"{described} |")

if __name__ == "__main__":
    app.run(main)
