"""PNG plots of runs: training curves, precision-recall curves, result sweeps."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from rs_hashing.atomic_files import atomic_path

TASK_NAMES = {"i2t": "image -> text", "t2i": "text -> image", "i2i": "image -> image", "t2t": "text -> text"}


def _pyplot():
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")  # Headless: runs write files, never open windows.
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    return plt


def _save(fig, path: str) -> str:
    """Saves (and closes) `fig` at `path` atomically: drawn into a temporary file beside
    it that replaces `path` only when complete, so a full disk or a crash leaves the
    previous picture. The format comes from `path`'s extension (PNG without one)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=os.path.splitext(path)[1][1:].lower() or "png")
    finally:
        _pyplot().close(fig)
    return path


def plot_training_curves(history: Mapping[str, Sequence[float]], path: str, title: str = "") -> str:
    """One panel per logged loss term, against epochs."""
    plt = _pyplot()
    names = [n for n, v in history.items() if len(v) and n != "epoch"]
    cols = min(4, max(1, len(names)))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ax.plot(range(1, len(history[name]) + 1), history[name])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_pr_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str, title: str = "") -> str:
    """Precision against recall by Hamming radius, one line per task."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for task, curve in curves.items():
        ax.plot(curve["recall"], curve["precision"], marker=".", label=TASK_NAMES.get(task, task))
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "precision-recall by Hamming radius")
    return _save(fig, path)


def plot_sweep(x: Sequence[float], series: Mapping[str, Sequence[float]], path: str, xlabel: str,
               ylabel: str = "mAP@20", title: str = "",
               reference: Mapping[str, Sequence[float]] | None = None) -> str:
    """Lines of results against a swept setting; `reference` lines are drawn dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, values in series.items():
        ax.plot(x, values, marker="o", label=name)
    for name, values in (reference or {}).items():
        ax.plot(x, values, linestyle="--", marker="x", alpha=0.7, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)
