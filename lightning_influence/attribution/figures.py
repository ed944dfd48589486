"""Figures for the loggers: the captioned top-k gallery of an explanation and the
step-search curve of an unlearning run.

Matplotlib is optional (the ``bench`` and ``dev`` extras install it): without it the gallery
falls back to an uncaptioned torchvision grid, one row per query. Either way a logger gets
one image per call under one tag (``influence/gallery``), at the trainer's step, so the
epochs line up in TensorBoard's slider instead of opening a tag per query.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AUM_HISTOGRAM_TAG",
    "GALLERY_TAG",
    "STEP_SEARCH_TAG",
    "gallery_array",
    "gallery_figure",
    "log_figure",
    "log_gallery",
    "score_histogram_array",
    "score_histogram_figure",
    "step_search_array",
    "step_search_figure",
    "takes_images",
]

#: the one tag every gallery is logged under
GALLERY_TAG = "influence/gallery"
#: the tag of the step-search curve of an unlearning run
STEP_SEARCH_TAG = "unlearn/step_search"
#: the tag of the AUM histogram a MarginCallback logs at the end of training
AUM_HISTOGRAM_TAG = "dynamics/aum_histogram"


def _tile(image: Tensor) -> np.ndarray:
    """``[C, H, W]`` as an ``[H, W]`` (grey) or ``[H, W, 3]`` array scaled to [0, 1]."""
    x = image.detach().float().cpu()
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def gallery_figure(exp: Any, queries: Any, inputs: dict[int, Tensor]) -> Any:
    """A matplotlib figure: one row per query (the query, its proponents, its opponents),
    each tile captioned with its label (and the query's prediction) or influence score.

    Args:
        exp: an :class:`~lightning_influence.attribution.explain.Explanation`.
        queries: the explained validation batch (``queries.x[i]`` is query ``i``'s image).
        inputs: ``{training id: image}`` of the listed training samples.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    q, k = len(exp.query_ids), int(exp.proponent_ids.shape[1])
    cols = 1 + 2 * k
    fig, axes = plt.subplots(q, cols, figsize=(1.3 * cols, 1.5 * q), squeeze=False)
    for i in range(q):
        label, pred = int(exp.query_labels[i]), int(exp.query_predictions[i])
        tiles = [(queries.x[i], f"query {int(exp.query_ids[i])}\ny={label} pred={pred}", "black")]
        for ids, scores, color, sign in (
            (exp.proponent_ids, exp.proponent_scores, "tab:green", "+"),
            (exp.opponent_ids, exp.opponent_scores, "tab:red", "-"),
        ):
            for r in range(k):
                tid = int(ids[i, r])
                caption = (
                    f"{sign}{r + 1}: y={exp.train_labels.get(tid, -1)}\n{float(scores[i, r]):.2g}"
                )
                tiles.append((inputs[tid], caption, color))
        for j, (image, caption, color) in enumerate(tiles):
            ax = axes[i, j]
            ax.imshow(_tile(image), cmap="gray")
            ax.set_title(caption, fontsize=7, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(2 if j else 3)
    fig.suptitle("validation query | proponents (green) | opponents (red)", fontsize=8)
    fig.tight_layout()
    return fig


def gallery_array(exp: Any, queries: Any, inputs: dict[int, Tensor]) -> np.ndarray:
    """The gallery as an ``[H, W, 3]`` uint8 image (uncaptioned without matplotlib)."""
    try:
        fig = gallery_figure(exp, queries, inputs)
    except ImportError:
        return _plain_grid(exp, queries, inputs)
    return _array(fig)


def _plain_grid(exp: Any, queries: Any, inputs: dict[int, Tensor]) -> np.ndarray:
    from torchvision.utils import make_grid

    rows = []
    for i in range(len(exp.query_ids)):
        ids = exp.proponent_ids[i].tolist() + exp.opponent_ids[i].tolist()
        rows += [queries.x[i]] + [inputs[t] for t in ids]
    cols = 1 + 2 * int(exp.proponent_ids.shape[1])
    grid = make_grid(torch.stack(rows).float().cpu(), nrow=cols, normalize=True, pad_value=1.0)
    return (grid.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def log_gallery(logger: Any, exp: Any, queries: Any, inputs: dict[int, Tensor], step: int) -> bool:
    """The gallery to ``logger`` under :data:`GALLERY_TAG`; False where it takes no image."""
    if not takes_images(logger):
        return False  # drawn only for a logger that takes it
    return log_figure(logger, GALLERY_TAG, gallery_array(exp, queries, inputs), step)


def step_search_figure(trials: list[dict[str, Any]], kept_radius: float | None = None) -> Any:
    """The step search as a figure: forget score, retained accuracy and F1 against the
    radius (log scale), one marker style per round, the kept radius as a vertical line.

    Args:
        trials: ``report.trials`` (dicts with radius, forget_acc, retain_acc, f1, round).
        kept_radius: the kept step's radius in its round (None: no step kept).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    rounds = sorted({int(t.get("round", 0)) for t in trials})
    markers = "os^vD<>p*"
    for key, color, name in (
        ("forget_acc", "tab:red", "forget score"),
        ("retain_acc", "tab:blue", "retained accuracy"),
        ("f1", "tab:green", "F1"),
    ):
        for r in rounds:
            pts = sorted((t["radius"], t[key]) for t in trials if int(t.get("round", 0)) == r)
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            label = name if r == rounds[0] else None
            ax.plot(xs, ys, marker=markers[r % len(markers)], color=color, lw=1, ms=4, label=label)
    if kept_radius is not None and kept_radius > 0:
        ax.axvline(kept_radius, color="black", ls="--", lw=1, label="kept step")
    ax.set_xscale("log")
    ax.set_xlabel("radius (relative to the selected weights' norm)")
    title = "step search" + (f" ({len(rounds)} rounds: one marker each)" if len(rounds) > 1 else "")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _array(fig: Any) -> np.ndarray:
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    array = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return array


def _image_api(logger: Any) -> tuple[Any, Any]:
    """(``experiment.add_image`` of TensorBoard, ``log_image`` of W&B and others), each or None."""
    add_image = getattr(getattr(logger, "experiment", None), "add_image", None)
    log_image = getattr(logger, "log_image", None)
    return (add_image if callable(add_image) else None), (
        log_image if callable(log_image) else None
    )


def takes_images(logger: Any) -> bool:
    """Whether ``logger`` takes images (``experiment.add_image`` or ``log_image``)."""
    return any(f is not None for f in _image_api(logger))


def log_figure(logger: Any, tag: str, array: np.ndarray, step: int) -> bool:
    """An ``[H, W, 3]`` image to ``logger`` under ``tag``; False where it takes no image."""
    add_image, log_image = _image_api(logger)
    if add_image is not None:  # TensorBoard's SummaryWriter
        add_image(tag, array, global_step=step, dataformats="HWC")
    elif log_image is not None:  # WandbLogger and others with log_image
        log_image(key=tag, images=[array], step=step)
    else:
        return False
    return True


def step_search_array(trials: list[dict[str, Any]], kept_radius: float | None) -> np.ndarray:
    """:func:`step_search_figure` as an ``[H, W, 3]`` uint8 image (needs matplotlib)."""
    return _array(step_search_figure(trials, kept_radius))


def score_histogram_figure(
    scores: Tensor, cut: float | None = None, xlabel: str = "score", flag: str = "below"
) -> Any:
    """A histogram of per-sample scores (log counts) with the cut as a vertical line and how
    many samples it flags (AUM, self-influence or a loss).

    Args:
        scores: ``[n]`` scores.
        cut: the flagging threshold (None: no line).
        xlabel: what the scores are.
        flag: ``'below'`` (AUM: low is suspicious) or ``'above'`` (self-influence, loss).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    values = scores.detach().double().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.hist(values, bins=60, color="tab:blue", alpha=0.8)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    title = f"{len(values)} samples"
    if cut is not None:
        flagged = int((values <= cut).sum() if flag == "below" else (values >= cut).sum())
        ax.axvline(cut, color="tab:red", ls="--", lw=1, label=f"cut {cut:.3g}: {flagged} flagged")
        ax.legend(fontsize=7)
        title += f", {flagged} at or {flag} the cut"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def score_histogram_array(
    scores: Tensor, cut: float | None = None, xlabel: str = "score", flag: str = "below"
) -> np.ndarray:
    """:func:`score_histogram_figure` as an ``[H, W, 3]`` uint8 image (needs matplotlib)."""
    return _array(score_histogram_figure(scores, cut, xlabel, flag))
