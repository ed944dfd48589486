"""Influence scores: which training samples drive a prediction, and which are self-influential.

The influence of a training sample z on a query q is

    I(q, z) = g_qᵀ (H + λI)⁻¹ g_z,   g = ∇θ ℓ(·; θ̂) of one sample,

with H the curvature of the mean training loss (EK-FAC by default, or the exact Gauss–Newton
matrix / Hessian). Upweighting z by ε moves θ̂ by −ε (H + λI)⁻¹ g_z, so the query's loss
changes by −ε I(q, z): a **positive** score is a *proponent* (more of z lowers the query's
loss), a negative one an *opponent*. The self-influence g_zᵀ (H + λI)⁻¹ g_z is how much z
supports its own label; mislabelled and atypical samples score highest.

:func:`influence_scores` preconditions the query gradients once, then streams the training
data in chunks of per-sample gradients (``torch.func``), so memory is bounded by the queries
and one chunk, never ``[n_train, n_params]``. The curvature is fitted on a weighted
representative subset of the training data that a Hessian-subset sampler picks
(:mod:`lightning_influence.sample.sampling`), or on ``hessian_data``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_influence.callbacks.progress import progress_bar as _bar
from lightning_influence.data._modules import eval_mode, model_device
from lightning_influence.data.batches import Batch, as_batches, iter_batches
from lightning_influence.data.forward import check_finite_inputs, inputs_take
from lightning_influence.data.loaders import data_pass
from lightning_influence.data.model_task import ModelTask
from lightning_influence.data.pool import BoundedPool, Rows, batch_ids
from lightning_influence.sample.subset import hessian_subset as draw_hessian_subset
from lightning_influence.solve.curvature import (
    DenseHessianOperator,
    GaussNewtonOperator,
    HessianOperator,
    LossFn,
    default_loss,
    is_cross_entropy,
    trainable_params,
)
from lightning_influence.solve.ekfac import (
    FISHERS,
    EKFACInverse,
    check_projection,
    covered_output_layer,
    fisher_rows,
    fit_ekfac,
    kronecker_layers,
    layer_dims,
    select_layers,
)
from lightning_influence.solve.gradients import flat_rows, per_sample_gradients
from lightning_influence.solve.operators import DenseMatrixOperator, IdentityOperator, ParamOperator
from lightning_influence.solve.solvers import InverseOperator
from lightning_influence.solve.vectors import ParamDict
from lightning_influence.unlearn.settings import HessianArguments, SamplerName

__all__ = ["CURVATURES", "ScoreArguments", "influence_scores", "self_influence"]

#: ``exact`` is an alias of ``gauss_newton``.
CURVATURES = ("ekfac", "kfac", "gauss_newton", "hessian", "exact")
_SOLVERS = ("auto", "dense", "krylov")
#: the ``projection`` value that picks :data:`AUTO_PROJECTION` or none by the layers' widths
AUTO = "auto"


@dataclass
class ScoreArguments:
    """How influence scores are computed (the keyword arguments of :func:`influence_scores`)."""

    curvature: str = field(
        default="ekfac",
        metadata={
            "help": "ekfac | kfac (Linear/Conv layers, Kronecker-factored) | gauss_newton "
            "(alias exact) | hessian: the exact matrix, solved densely or by MINRES"
        },
    )
    damping: float | None = field(
        default=None,
        metadata={
            "help": "λ of (H + λI); None: 0.1 × the mean eigenvalue (per layer for (E)K-FAC, "
            "of the whole Fisher for the exact curvatures)"
        },
    )
    fisher: str | None = field(
        default=None,
        metadata={
            "help": "expected | sampled | empirical: the labels (E)K-FAC is fitted with; None: "
            "sampled for cross-entropy, empirical for a custom loss_fn"
        },
    )
    layers: str | list[str] | None = field(
        default=None,
        metadata={
            "help": "(E)K-FAC: the covered layers that enter (None or 'last': the output "
            "layer, the last Linear/Conv layer that runs, measured best for finding flipped "
            "labels; 'all': every covered layer; or module names); the exact curvatures "
            "take all parameters"
        },
    )
    projection: int | str | None = field(
        default="auto",
        metadata={
            "help": "(E)K-FAC: map each layer's inputs and output gradients wider than this to "
            "this many dimensions with fixed random Gaussian matrices first (LoGra-style): "
            "the scores become those of the projected gradients, and wide layers (a ResNet's "
            "convolutions, layers='all') cost a fraction; 'auto': 64 when a covered layer's "
            "factor is wider than 2048 (measured: 20x faster there), else none; None: never"
        },
    )
    sampler: str = field(
        default="logit",
        metadata={"help": "random | feature | logit: picks the curvature's subset"},
    )
    budget: int = field(
        default=1024, metadata={"help": "training samples the curvature is fitted on"}
    )
    pool_size: int = field(
        default=8192, metadata={"help": "the sampler's candidates (a seeded random subset)"}
    )
    batch_size: int = field(default=128, metadata={"help": "samples per per-sample-gradient chunk"})
    solver: str = field(
        default="auto",
        metadata={"help": "exact curvatures: auto (dense up to max_params) | dense | krylov"},
    )
    max_params: int = field(default=5000, metadata={"help": "the largest dense exact solve"})
    tol: float = field(default=1e-8, metadata={"help": "MINRES relative residual"})
    max_iter: int = field(default=500, metadata={"help": "MINRES iterations per solve"})
    seed: int = field(default=0, metadata={"help": "seed of the sampler and the label draws"})

    def __post_init__(self) -> None:
        if self.curvature not in CURVATURES:
            raise ValueError(f"Unknown curvature {self.curvature!r}: choose one of {CURVATURES}.")
        if self.damping is not None and not self.damping >= 0:
            raise ValueError(f"damping must be >= 0 or None, got {self.damping}.")
        if self.fisher is not None and self.fisher not in FISHERS:
            raise ValueError(f"Unknown fisher {self.fisher!r}: choose one of {FISHERS}.")
        if self.solver not in _SOLVERS:
            raise ValueError(f"Unknown solver {self.solver!r}: choose one of {_SOLVERS}.")
        for name in ("budget", "pool_size", "batch_size", "max_params", "max_iter"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        samplers = get_args(SamplerName)
        if self.sampler not in samplers:
            raise ValueError(f"Unknown sampler {self.sampler!r}: choose one of {samplers}.")
        self.hessian  # noqa: B018  (the subset's group checks its fields as unlearning's does)
        if self.projection not in (None, AUTO):
            try:
                check_projection(self.projection)
            except ValueError:
                raise ValueError(
                    f"projection must be 'auto' (the default), an integer >= 1 or None, got "
                    f"{self.projection!r}."
                ) from None
            if self.exact:
                raise ValueError(
                    f"projection={self.projection} projects (E)K-FAC's factors; "
                    f"curvature={self.curvature!r} is an exact matrix. Use curvature='ekfac'."
                )
        if self.layers not in (None, "all") and self.exact:
            raise ValueError(
                f"layers={self.layers!r} selects (E)K-FAC blocks; curvature={self.curvature!r} "
                "takes every trainable parameter (freeze the others with requires_grad=False)."
            )

    @property
    def kronecker_layers(self) -> str | list[str] | None:
        """What :func:`~lightning_influence.solve.ekfac.select_layers` takes: ``"last"`` by default,
        ``None`` (every covered layer) for ``"all"``, else the given names."""
        if self.layers is None:
            return "last"
        return None if self.layers == "all" else self.layers

    @property
    def hessian(self) -> HessianArguments:
        """The Hessian subset's settings in the group unlearning uses (one front end, one
        check). A budget above the pool takes the whole pool, as a budget equal to it does."""
        return HessianArguments(
            sampler=self.sampler, budget=min(self.budget, self.pool_size), pool_size=self.pool_size
        )

    @property
    def exact(self) -> bool:
        """Whether the curvature is an exact matrix (not Kronecker-factored)."""
        return self.curvature in ("gauss_newton", "hessian", "exact")


# ----------------------------------------------------------------------------- data


def chunks(data: Any, name: str, size: int) -> Iterator[tuple[Batch, Tensor]]:
    """``(batch of at most size rows, their ids)`` over the data, read lazily.

    A DataLoader is read in dataset order (its sampler's indices, shuffling undone, see
    :func:`~lightning_influence.data.loaders.data_pass`); ids are the batches' own, else the
    dataset index, else the running position. A map-style Dataset is read through a
    DataLoader of ``size`` rows, so its samples are batched, not taken as batches (an
    IterableDataset is read as it comes: it may yield whole batches).
    """
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        data = DataLoader(data, batch_size=size)
    dp = data_pass(data) if isinstance(data, DataLoader) else None
    start = 0
    for batch in iter_batches(dp if dp is not None else data, name):
        check_finite_inputs(batch.x, name)
        ids = batch_ids(batch, start)
        if batch.ids is None and dp is not None and dp.position_ids is not None:
            ids = dp.position_ids[start : start + len(batch)]
        start += len(batch)
        for i in range(0, len(batch), size):
            part = slice(i, i + size)
            yield Batch(inputs_take(batch.x, part), batch.y[part], ids[part]), ids[part]


def hessian_subset(
    model: nn.Module, train_data: Any, args: ScoreArguments, name: str = "train_data"
) -> list[Batch]:
    """The sampler's weighted subset of (a bounded random pool of) the training data.

    The pool is read here (any form of data :func:`influence_scores` takes); the subset is
    drawn by the front end unlearning uses too (:func:`lightning_influence.sample.subset.hessian_subset`).

    Args:
        model: the model, in ``eval()``.
        train_data: the training data (any form :func:`influence_scores` takes).
        args: ``sampler``, ``budget``, ``pool_size``, ``seed`` and ``batch_size``.
        name: what the data is called in error messages.
    """
    pool = BoundedPool(args.pool_size, args.seed)
    like = None
    for batch, ids in chunks(train_data, name, args.batch_size):
        rows = Rows(batch.x, batch.y, ids)
        like = like or rows
        pool.add(rows)
    assert like is not None
    return draw_hessian_subset(
        model,
        pool.result(like),
        args.hessian,
        seed=args.seed,
        batch_size=args.batch_size,
        device=model_device(model),
    )


# ----------------------------------------------------------------------------- curvature


def preconditioner(
    model: nn.Module, loss_fn: LossFn, hessian: list[Batch], args: ScoreArguments
) -> tuple[ParamOperator, list[str]]:
    """(H + λI)⁻¹ as an operator, and the parameters it acts on (the scores' gradients).

    Args:
        model: the model, in ``eval()``.
        loss_fn: a mean-reducing loss.
        hessian: the curvature's (weighted) batches.
        args: the settings.
    """
    cross_entropy = is_cross_entropy(loss_fn)
    fisher = args.fisher or ("sampled" if cross_entropy else "empirical")
    if fisher != "empirical" and not cross_entropy:
        raise ValueError(
            f"fisher={fisher!r} draws labels from the softmax, which assumes cross-entropy; "
            "with a custom loss_fn pass fisher='empirical'."
        )
    if not args.exact:
        layers = kronecker_names(model, args, hessian)
        projection = resolved_projection(model, args, layers)
        rows = fisher_rows(model, hessian, fisher, args.seed, args.batch_size)
        ekfac = fit_ekfac(
            model,
            loss_fn,
            rows,
            correct=args.curvature == "ekfac",
            layers=layers,
            projection=projection,
            seed=args.seed,
        )
        return ekfac.inverse(args.damping), ekfac.params
    names = list(trainable_params(model))
    damping = args.damping
    if damping is None:
        damping = 0.1 * _fisher_trace(model, loss_fn, hessian, fisher, args) / _size(model)
    kind = "gauss_newton" if args.curvature in ("gauss_newton", "exact") else "hessian"
    dense = args.solver == "dense" or (args.solver == "auto" and _size(model) <= args.max_params)
    if dense:
        H = DenseHessianOperator(model, loss_fn, hessian, args.max_params, kind)
        eye = torch.eye(H.matrix.shape[0], dtype=H.matrix.dtype)
        inverse = torch.linalg.solve(H.matrix + damping * eye, eye)
        return DenseMatrixOperator(inverse, H.params, symmetric=True), names
    op_class = GaussNewtonOperator if kind == "gauss_newton" else HessianOperator
    H = op_class(model, loss_fn, hessian)
    system = H + damping * IdentityOperator() if damping else H
    return InverseOperator(system, "krylov", tol=args.tol, max_iter=args.max_iter), names


#: a factor wider than this makes an unprojected EK-FAC slow: ``projection="auto"`` projects
#: then, and an explicit ``projection=None`` says so up front
WIDE_FACTOR = 2048
#: the width ``projection="auto"`` maps wide layers to (ResNet-18, every layer: 1.6 training
#: epochs of CPU and 0.39 GB against 39 epochs and 2.5 GB unprojected, Spearman 0.995)
AUTO_PROJECTION = 64
_ANNOUNCED: set[tuple[int, str]] = set()


def kronecker_names(
    model: nn.Module, args: ScoreArguments, hessian: list[Batch]
) -> list[str] | None:
    """The covered layers ``args`` selects, by name (None: every covered layer): the
    default, the output layer, is found by running the model on the curvature's first batch
    (:func:`~lightning_influence.solve.ekfac.covered_output_layer`)."""
    which = args.kronecker_layers
    if which != "last":
        return which if which is None or isinstance(which, list) else [which]
    covered = kronecker_layers(model)
    if not covered:
        return None  # fit_ekfac says what to do
    return [covered_output_layer(model, covered, hessian)]


def _widest_factor(model: nn.Module, layers: list[str] | None) -> tuple[str, int] | None:
    """The selected layer with the widest factor above :data:`WIDE_FACTOR`, and its width
    (None: no selected layer is that wide, or nothing is covered)."""
    covered = kronecker_layers(model)
    if not covered:
        return None  # fit_ekfac says what to do
    layers = select_layers(covered, layers)
    wide = {n: w for n, layer in layers.items() if (w := max(layer_dims(layer))) > WIDE_FACTOR}
    return max(wide.items(), key=lambda nw: nw[1]) if wide else None


def resolved_projection(
    model: nn.Module, args: ScoreArguments, layers: list[str] | None
) -> int | None:
    """The projection width EK-FAC is fitted with: ``args.projection``, where ``"auto"`` is
    :data:`AUTO_PROJECTION` when a selected layer's factor is wider than
    :data:`WIDE_FACTOR` and none otherwise. Says once per model and layer when a wide layer
    is projected by ``"auto"`` or left whole by an explicit ``None``.

    Args:
        model: the model.
        args: the settings.
        layers: the covered layers EK-FAC is fitted on (:func:`kronecker_names`).
    """
    if args.projection not in (None, AUTO):
        return args.projection
    widest = _widest_factor(model, layers)
    if widest is None:
        return None
    name, width = widest
    if (id(model), name) not in _ANNOUNCED:  # once per model: an InfluenceCallback scores often
        _ANNOUNCED.add((id(model), name))
        if args.projection == AUTO:
            rank_zero_info(
                f"EK-FAC: layer(s) with factors wider than {WIDE_FACTOR} (widest: {name!r}, "
                f"{width}) are sketched to {AUTO_PROJECTION} dimensions (projection='auto'); "
                "projection=None fits them whole, at the square of their width (ResNet-18, "
                "layers='all': about 40 training epochs of CPU time against 2)."
            )
        else:
            rank_zero_info(
                f"EK-FAC over layer(s) with factors wider than {WIDE_FACTOR} (widest: "
                f"{name!r}, {width}): their eigendecompositions and per-sample rotations grow "
                "with the square of the width (ResNet-18, layers='all': about 40 training "
                f"epochs of CPU time). projection={AUTO_PROJECTION} (or 'auto', the default) "
                "sketches wide layers first (about 2 epochs there; see 'Projected EK-FAC' in "
                "docs/scores.md)."
            )
    return AUTO_PROJECTION if args.projection == AUTO else None


def _size(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable_params(model).values())


def _fisher_trace(
    model: nn.Module, loss_fn: LossFn, hessian: list[Batch], fisher: str, args: ScoreArguments
) -> float:
    """tr(F): the weighted mean of ‖gₙ‖² over the Fisher rows (for cross-entropy with the
    expected Fisher, the trace of the Gauss–Newton matrix)."""
    rows = fisher_rows(model, hessian, fisher, args.seed, args.batch_size)
    total = weight = 0.0
    for b in rows:
        g = flat_rows(per_sample_gradients(model, loss_fn, b)).double()
        w = torch.ones(len(b), dtype=torch.float64) if b.weights is None else b.weights.double()
        total += float((w.to(g.device) * (g**2).sum(1)).sum())
        weight += float(w.sum())
    return total / weight


# ----------------------------------------------------------------------------- scores


def _settings(kwargs: dict[str, Any], score_args: Any = None) -> ScoreArguments:
    """The settings from ``score_args`` (a ScoreArguments or a dict of its fields) and/or
    keyword fields; a field given both ways takes the keyword's value."""
    if score_args is not None:
        if isinstance(score_args, ScoreArguments):
            score_args = asdict(score_args)
        if not isinstance(score_args, dict):
            raise TypeError(
                f"score_args must be a ScoreArguments or a dict of its fields, got "
                f"{type(score_args).__name__}."
            )
        kwargs = {**score_args, **kwargs}
    unknown = sorted(set(kwargs) - set(ScoreArguments.__dataclass_fields__))
    if unknown:
        raise TypeError(
            f"Unknown influence-score options {unknown}: choose from "
            f"{sorted(ScoreArguments.__dataclass_fields__)}."
        )
    return ScoreArguments(**kwargs)


def _setup(model, train_data, loss_fn, hessian_data, args):
    loss_fn = loss_fn or default_loss
    if hessian_data is None:
        hessian = hessian_subset(model, train_data, args)
    else:
        hessian = as_batches(hessian_data, "hessian_data")
    inverse, names = preconditioner(model, loss_fn, hessian, args)
    return loss_fn, inverse, names


def _total(data: Any) -> int | None:
    try:
        return len(data.dataset) if isinstance(data, DataLoader) else None
    except TypeError:
        return None


def _stream(
    model, loss_fn, train_data, names, args, show, desc
) -> Iterator[tuple[ParamDict, Tensor]]:
    """Per-sample gradients of the training data, chunk by chunk, with a progress bar."""
    for batch, ids in _stream_batches(train_data, args, show, desc):
        yield per_sample_gradients(model, loss_fn, batch, names), ids


def _stream_batches(
    train_data, args, show, desc: str = "self-influence"
) -> Iterator[tuple[Batch, Tensor]]:
    """The training data chunk by chunk, with a progress bar."""
    done = 0
    with _bar(show, _total(train_data), desc) as bar:
        for batch, ids in chunks(train_data, "train_data", args.batch_size):
            yield batch, ids
            done += len(batch)
            bar.advance(done, f"{done} samples")


def _finish(parts: list[Tensor], ids: list[Tensor], return_ids: bool):
    scores = torch.cat(parts, dim=-1)
    all_ids = torch.cat(ids)
    if torch.unique(all_ids).numel() != all_ids.numel():
        raise ValueError(
            "train_data yields some sample id more than once: give each training sample once "
            "(e.g. no DistributedSampler padding, no repeated batches)."
        )
    return (scores, all_ids) if return_ids else scores


def influence_scores(
    model: nn.Module,
    train_data: Any,
    query_data: Any,
    *,
    loss_fn: LossFn | None = None,
    hessian_data: Any = None,
    progress_bar: bool = False,
    return_ids: bool = False,
    score_args: ScoreArguments | dict[str, Any] | None = None,
    model_task: ModelTask | None = None,
    **settings: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """I(q, z) = g_qᵀ (H + λI)⁻¹ g_z for every query q and training sample z.

    Positive: z is a proponent of q (upweighting z lowers q's loss); negative: an opponent.

    Args:
        model: the trained model (run in ``eval()``, each submodule's mode restored; its
            weights are never written). Only parameters with ``requires_grad`` enter.
        train_data: ``(x, y)`` tensors, a batch, an iterable of batches or a DataLoader (read
            in dataset order, shuffling undone). Read twice (curvature subset, then scores).
        query_data: the queries, in the same forms (all held at once: keep it small).
        loss_fn: a mean-reducing loss ``loss_fn(outputs, targets)`` (``None``: cross-entropy).
        hessian_data: the curvature's data (weighted batches); ``None``: the sampler's
            subset of ``train_data`` (``sampler``, ``budget``, ``pool_size``).
        progress_bar: show a bar over the training samples.
        return_ids: also return the training ids of the columns.
        score_args: the settings as one :class:`ScoreArguments` (or a dict of its fields),
            as ``InfluenceCallback(scores=...)`` takes them; keyword fields override it.
        model_task: loss, batch parser and ``logits_fn`` as one
            :class:`~lightning_influence.ModelTask` (give either it or ``loss_fn``): every
            data argument is read through its parser; with a ``logits_fn`` the model is
            wrapped, so named ``layers`` take the prefix ``model.``.
        **settings: the fields of :class:`ScoreArguments` (``curvature``, ``damping``,
            ``fisher``, ``sampler``, ``budget``, ``batch_size``, ``solver`` ...).

    Returns:
        ``[n_query, n_train]`` scores in the model's dtype, columns in the order of
        ``train_data``; with ``return_ids`` also the ``[n_train]`` ids (the batches' ids,
        else the dataset index of a DataLoader, else the position).
    """
    args = _settings(settings, score_args)
    task = ModelTask.of(model_task, loss_fn=loss_fn)
    model, (train_data, query_data, hessian_data) = task.read(
        model, train_data, query_data, hessian_data
    )
    loss_fn = task.loss_fn
    dtype = next(iter(trainable_params(model).values())).dtype
    with eval_mode(model):
        loss_fn, inverse, names = _setup(model, train_data, loss_fn, hessian_data, args)
        queries = [b for b, _ in chunks(query_data, "query_data", args.batch_size)]
        grads = _query_gradients(model, loss_fn, queries, names)
        q = {k: torch.cat([g[k] for g in grads]) for k in names}
        pq = flat_rows(inverse.matmat(q), names).double()
        parts, ids = [], []
        for g, chunk_ids in _stream(
            model, loss_fn, train_data, names, args, progress_bar, "influence scores"
        ):
            parts.append((pq @ flat_rows(g, names).double().T).to(dtype))
            ids.append(chunk_ids)
    return _finish(parts, ids, return_ids)


def _query_gradients(
    model: nn.Module, loss_fn: LossFn, queries: list[Batch], names: list[str]
) -> list[ParamDict]:
    """Per-sample gradients of the queries; a model that cannot run on them names query_data."""
    try:
        return [per_sample_gradients(model, loss_fn, b, names) for b in queries]
    except (RuntimeError, IndexError) as err:
        shapes = sorted({str(list(t.shape)) for b in queries for t in _tensors(b.x)})
        raise ValueError(
            f"The model cannot run on query_data (inputs {', '.join(shapes)}): {err}. Give "
            "queries shaped like the training inputs, with class labels."
        ) from err


def _tensors(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    values = x.values() if isinstance(x, dict) else x
    return [t for v in values for t in _tensors(v)]


def self_influence(
    model: nn.Module,
    train_data: Any,
    *,
    loss_fn: LossFn | None = None,
    hessian_data: Any = None,
    progress_bar: bool = False,
    return_ids: bool = False,
    score_args: ScoreArguments | dict[str, Any] | None = None,
    model_task: ModelTask | None = None,
    **settings: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """g_zᵀ (H + λI)⁻¹ g_z for every training sample z; higher = more self-influential.

    Arguments as :func:`influence_scores`. With an exact curvature above ``max_params``
    every sample costs one MINRES solve; EK-FAC costs one rotation per sample.

    Returns:
        ``[n_train]`` scores in the model's dtype (with ``return_ids``: and their ids).
    """
    args = _settings(settings, score_args)
    task = ModelTask.of(model_task, loss_fn=loss_fn)
    model, (train_data, hessian_data) = task.read(model, train_data, hessian_data)
    loss_fn = task.loss_fn
    dtype = next(iter(trainable_params(model).values())).dtype
    with eval_mode(model):
        loss_fn, inverse, names = _setup(model, train_data, loss_fn, hessian_data, args)
        if isinstance(inverse, EKFACInverse):  # rotate each row's factors, no gradient formed
            batches = _stream_batches(train_data, args, progress_bar)
            quadratics = ((inverse.quadratic_of_rows(model, loss_fn, b), i) for b, i in batches)
        else:
            grads = _stream(model, loss_fn, train_data, names, args, progress_bar, "self-influence")
            quadratics = ((_quadratic(inverse, g, names), i) for g, i in grads)
        parts, ids = [], []
        for q, chunk_ids in quadratics:
            parts.append(q.to(dtype))
            ids.append(chunk_ids)
    return _finish(parts, ids, return_ids)


def _quadratic(inverse: ParamOperator, g: ParamDict, names: list[str]) -> Tensor:
    """gᵀ (H + λI)⁻¹ g per row (EK-FAC: one rotation; others: mat-mat then dot)."""
    quadratic = getattr(inverse, "quadratic", None)
    if quadratic is not None:
        return quadratic(g)
    pg = flat_rows(inverse.matmat(g), names).double()
    return (pg * flat_rows(g, names).double()).sum(dim=1)


def settings_dict(args: ScoreArguments) -> dict[str, Any]:
    """The settings as keyword arguments of :func:`influence_scores`."""
    return asdict(args)
