"""Figures for the loggers: the captioned top-k gallery of an explanation.

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

__all__ = ["GALLERY_TAG", "gallery_array", "gallery_figure", "log_gallery"]

#: the one tag every gallery is logged under
GALLERY_TAG = "influence/gallery"


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
        exp: an :class:`~lightning_influence.explain.Explanation`.
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
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    array = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return array


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
    add_image = getattr(getattr(logger, "experiment", None), "add_image", None)
    log_image = getattr(logger, "log_image", None)
    if not (callable(add_image) or callable(log_image)):
        return False
    array = gallery_array(exp, queries, inputs)
    if callable(add_image):  # TensorBoard's SummaryWriter
        add_image(GALLERY_TAG, array, global_step=step, dataformats="HWC")
    else:  # WandbLogger and others with log_image
        log_image(key=GALLERY_TAG, images=[array], step=step)
    return True
