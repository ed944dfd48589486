"""Hessian-subset samplers: choose B ⊂ retained pool and weights so that H_B ≈ H_pool.

All samplers share one interface, ``select(pool, budget, exclude_classes, exclude_ids, seed)``,
and return a :class:`SubsetSelection` whose weights sum to the size of the pool that was
eligible (after exclusion). The weighted mean loss ``Σ w_i ℓ_i / Σ w_i`` over the subset is
then an estimate of the eligible pool's mean loss, and its Hessian an estimate of the pool's.

- :class:`RandomSampler`: uniform without replacement; every weight is ``pool_size / budget``
  (so the weighted mean is the plain subset mean). The baseline.
- :class:`FeatureSampler`: k-means (faiss) on the captured features, class-stratified; the
  member nearest each centroid represents its cluster with weight = cluster size.
- :class:`LogitSampler`: the same on logits or log-softmax.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from lightning_influence.sample.capture import CaptureResult

__all__ = [
    "SubsetSelection",
    "Sampler",
    "RandomSampler",
    "ClusterSampler",
    "FeatureSampler",
    "LogitSampler",
    "get_sampler",
    "stratified_quotas",
]


@dataclass
class SubsetSelection:
    """Chosen sample ids, their weights (sum = eligible pool size) and diagnostics."""

    ids: torch.Tensor
    weights: torch.Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def normalized_weights(self) -> torch.Tensor:
        """Weights that sum to 1 (the weights of the weighted *mean* loss)."""
        return self.weights / self.weights.sum()


@runtime_checkable
class Sampler(Protocol):
    """Anything that picks a weighted Hessian subset from a captured pool."""

    def select(
        self,
        pool: CaptureResult,
        budget: int,
        exclude_classes: Iterable[int] = (),
        exclude_ids: Iterable[int] | torch.Tensor | None = None,
        seed: int = 0,
    ) -> SubsetSelection: ...


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _eligible(
    pool: CaptureResult,
    budget: int,
    exclude_classes: Iterable[int],
    exclude_ids: Iterable[int] | torch.Tensor | None,
) -> torch.Tensor:
    """Boolean mask of the pool rows that may enter the subset; validates the budget."""
    if len(pool) == 0:
        raise ValueError("the capture pool is empty: nothing to sample from.")
    if isinstance(budget, bool) or int(budget) != budget or budget <= 0:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    mask = torch.ones(len(pool), dtype=torch.bool)
    excl = torch.as_tensor(list(exclude_classes), dtype=torch.long)
    if excl.numel():
        mask &= ~torch.isin(pool.labels, excl)
    if exclude_ids is not None:
        eids = torch.as_tensor(
            exclude_ids if isinstance(exclude_ids, torch.Tensor) else list(exclude_ids),
            dtype=torch.long,
        ).reshape(-1)
        if eids.numel():
            mask &= ~torch.isin(pool.ids, eids)
    n = int(mask.sum())
    if n == 0:
        raise ValueError(
            f"excluding classes {excl.tolist()} and {0 if exclude_ids is None else 'the given'} "
            f"ids leaves no samples in the pool of {len(pool)}."
        )
    if budget > n:
        raise ValueError(
            f"budget {budget} exceeds the {n} eligible samples (pool {len(pool)}, after "
            "excluding the forget classes/ids); lower the budget or capture a larger pool."
        )
    return mask


def stratified_quotas(counts: Sequence[int], budget: int) -> list[int]:
    """Split ``budget`` over classes in proportion to ``counts``, exactly.

    Largest-remainder (Hamilton) rounding, with every class getting at least 1 and at most its
    count; what a capped class cannot take goes to the others by the same rule.
    """
    counts = [int(c) for c in counts]
    total = sum(counts)
    if budget < len(counts):
        raise ValueError(
            f"a class-stratified subset needs at least one sample per retained class: budget "
            f"{budget} < {len(counts)} classes. Raise the budget, exclude classes, or use the "
            "random sampler."
        )
    if budget > total:
        raise ValueError(f"budget {budget} exceeds the {total} samples to stratify")
    ideal = [budget * c / total for c in counts]
    quota = [min(c, max(1, int(np.floor(q)))) for c, q in zip(counts, ideal, strict=True)]
    while sum(quota) < budget:  # add where the shortfall to the ideal is largest
        room = [i for i in range(len(counts)) if quota[i] < counts[i]]
        i = max(room, key=lambda j: (ideal[j] - quota[j], -j))
        quota[i] += 1
    while sum(quota) > budget:  # the minimum of 1 over-allocated: take from the most over
        over = [i for i in range(len(counts)) if quota[i] > 1]
        i = max(over, key=lambda j: (quota[j] - ideal[j], -j))
        quota[i] -= 1
    return quota


def _per_class_counts(labels: torch.Tensor) -> dict[int, int]:
    cls, cnt = torch.unique(labels, return_counts=True)
    return {int(c): int(n) for c, n in zip(cls, cnt, strict=True)}


# --------------------------------------------------------------------------------------------
# Random
# --------------------------------------------------------------------------------------------


class RandomSampler:
    """Uniform sampling without replacement; weights ``pool_size / budget`` (all equal)."""

    name = "random"

    def select(
        self,
        pool: CaptureResult,
        budget: int,
        exclude_classes: Iterable[int] = (),
        exclude_ids: Iterable[int] | torch.Tensor | None = None,
        seed: int = 0,
    ) -> SubsetSelection:
        mask = _eligible(pool, budget, exclude_classes, exclude_ids)
        rows = torch.nonzero(mask).reshape(-1)
        g = torch.Generator().manual_seed(int(seed))
        pick = rows[torch.randperm(rows.numel(), generator=g)[:budget]]
        n = rows.numel()
        weights = torch.full((budget,), n / budget, dtype=torch.float64)
        picked_classes = set(pool.labels[pick].tolist())
        covered = sum(
            v for c, v in _per_class_counts(pool.labels[rows]).items() if c in picked_classes
        )
        return SubsetSelection(
            ids=pool.ids[pick].clone(),
            weights=weights,
            diagnostics={
                "sampler": self.name,
                "pool_size": n,
                "budget": budget,
                "unique_picks": int(torch.unique(pick).numel()),
                "per_class_counts": _per_class_counts(pool.labels[pick]),
                "pool_class_counts": _per_class_counts(pool.labels[rows]),
                # For random the "clusters" are the classes: pool share whose class was picked.
                "coverage": covered / n,
            },
        )


# --------------------------------------------------------------------------------------------
# Cluster samplers
# --------------------------------------------------------------------------------------------


class ClusterSampler:
    """Class-stratified k-means on per-sample vectors; one weighted representative per cluster.

    For each retained class c (after exclusion) with n_c samples, k_c = its share of the budget
    (:func:`stratified_quotas`). If n_c <= k_c, the whole class is taken with weight 1.
    Otherwise faiss k-means with k_c centroids runs on that class's vectors, every class
    sample is assigned to its nearest centroid, the assigned member nearest each centroid is
    picked (members of different clusters are disjoint, so picks never repeat) and weighted by
    its cluster's size. A centroid left with no members takes the nearest unused class sample,
    which moves out of its old cluster (weights stay ≥ 1 and sum to n_c).

    Args:
        source: ``"features"`` or ``"logits"``: which column of the capture to cluster.
        space: for logits, ``"logits"`` or ``"log_softmax"``.
        spherical: L2-normalise vectors and use spherical k-means (cosine geometry).
        pca_dim: project to this many principal components first (``faiss.PCAMatrix``, fitted
            on the eligible pool); ``None`` or ≥ the width keeps all dimensions.
        kmeans_pp: k-means++ initialisation instead of faiss's random init.
        niter: k-means iterations.
        max_points_per_centroid: faiss subsamples a class to this many points per centroid
            while training (assignment always uses every sample).
        num_threads: OpenMP threads for faiss; ``None`` uses 1 thread for small problems
            (n·k·d < 5e7, where thread start-up costs more than the work) and faiss's default
            otherwise.
    """

    name = "cluster"

    def __init__(
        self,
        source: Literal["features", "logits"] = "features",
        space: Literal["logits", "log_softmax"] = "logits",
        spherical: bool = False,
        pca_dim: int | None = None,
        kmeans_pp: bool = False,
        niter: int = 20,
        max_points_per_centroid: int = 256,
        num_threads: int | None = None,
    ) -> None:
        if source not in ("features", "logits"):
            raise ValueError(f"source must be 'features' or 'logits', got {source!r}")
        if space not in ("logits", "log_softmax"):
            raise ValueError(f"space must be 'logits' or 'log_softmax', got {space!r}")
        if pca_dim is not None and pca_dim < 1:
            raise ValueError(f"pca_dim must be a positive integer or None, got {pca_dim}")
        if niter < 1:
            raise ValueError(f"niter must be >= 1, got {niter}")
        self.source = source
        self.space = space
        self.spherical = spherical
        self.pca_dim = pca_dim
        self.kmeans_pp = kmeans_pp
        self.niter = int(niter)
        self.max_points_per_centroid = int(max_points_per_centroid)
        self.num_threads = num_threads

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, space={self.space!r}, "
            f"spherical={self.spherical}, pca_dim={self.pca_dim}, kmeans_pp={self.kmeans_pp}, "
            f"niter={self.niter})"
        )

    # --- vectors -----------------------------------------------------------------------------

    def _vectors(self, pool: CaptureResult, rows: torch.Tensor) -> np.ndarray:
        """The (eligible) rows as a float32 C-contiguous array, transformed as configured."""
        if self.source == "features":
            if pool.features is None:
                raise ValueError(
                    "the capture holds no features (store_features=False?): capture them or "
                    "use the logit sampler."
                )
            v = pool.features[rows]
        else:
            v = pool.logits[rows]
            if self.space == "log_softmax":
                v = torch.log_softmax(v.double(), dim=1)
        if v.ndim != 2:
            v = v.reshape(v.shape[0], -1)
        if not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).any(dim=1).sum())
            raise ValueError(
                f"the captured {self.source} contain NaN or inf in {bad} of {v.shape[0]} "
                "samples; fix the model/capture (half precision overflow?) before sampling."
            )
        x = np.ascontiguousarray(v.detach().cpu().double().numpy().astype(np.float32))
        if self.pca_dim is not None and self.pca_dim < x.shape[1]:
            import faiss

            pca = faiss.PCAMatrix(x.shape[1], int(self.pca_dim))
            with self._threads(float(x.shape[0]) * x.shape[1] ** 2):
                pca.train(x)
                x = np.ascontiguousarray(pca.apply(x))
        if self.spherical:
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.maximum(norms, 1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)

    @contextmanager
    def _threads(self, work: float) -> Iterator[None]:
        """Set faiss's OpenMP threads for one call, then restore them."""
        import faiss

        threads = self.num_threads
        if threads is None and work < _SMALL_KMEANS_WORK:
            threads = 1  # OpenMP start-up/spin costs dominate small problems (0.4 s vs 1 ms)
        before = faiss.omp_get_max_threads()
        if threads is not None:
            faiss.omp_set_num_threads(int(threads))
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)

    # --- clustering --------------------------------------------------------------------------

    def _cluster_class(
        self, x: np.ndarray, k: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """k-means on one class: (picked local rows, weights, cluster sizes, refilled count)."""
        import faiss

        n, d = x.shape
        kw: dict[str, Any] = dict(
            niter=self.niter,
            seed=int(seed),
            spherical=self.spherical,
            max_points_per_centroid=self.max_points_per_centroid,
            min_points_per_centroid=1,  # small classes are fine; silences faiss's warning
            verbose=False,
        )
        if self.kmeans_pp:
            kw["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
        km = faiss.Kmeans(d, k, **kw)
        with self._threads(n * k * d):
            km.train(x)
            centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
            # Assign every sample to its nearest centroid (L2; for spherical both are
            # normalised, so this is the same as the largest inner product).
            index = faiss.IndexFlatL2(d)
            index.add(centroids)
            _, assign = index.search(x, 1)
        assign = assign.reshape(-1)
        dist = ((x - centroids[assign]) ** 2).sum(axis=1)
        sizes = np.bincount(assign, minlength=k).astype(np.int64)

        picks = np.full(k, -1, dtype=np.int64)
        used = np.zeros(n, dtype=bool)
        for j in range(k):
            members = np.nonzero(assign == j)[0]
            if members.size:
                # Nearest member; ties broken by the lower row (deterministic).
                best = members[np.lexsort((members, dist[members]))[0]]
                picks[j] = best
                used[best] = True
        weights = sizes.astype(np.float64).copy()
        empty = np.nonzero(picks < 0)[0]
        for j in empty:  # empty cluster: nearest unused sample
            d_all = ((x - centroids[j]) ** 2).sum(axis=1)
            d_all[used] = np.inf
            best = int(np.lexsort((np.arange(n), d_all))[0])
            picks[j] = best
            used[best] = True
            weights[j] = 1.0
            weights[assign[best]] -= 1.0  # it leaves its old cluster (≥ 2 members: unused)
            sizes[assign[best]] -= 1
            sizes[j] = 1
        return picks, weights, sizes, int(empty.size)

    def select(
        self,
        pool: CaptureResult,
        budget: int,
        exclude_classes: Iterable[int] = (),
        exclude_ids: Iterable[int] | torch.Tensor | None = None,
        seed: int = 0,
    ) -> SubsetSelection:
        mask = _eligible(pool, budget, exclude_classes, exclude_ids)
        rows = torch.nonzero(mask).reshape(-1)
        x = self._vectors(pool, rows)
        labels = pool.labels[rows]
        classes, counts = torch.unique(labels, return_counts=True)
        quotas = stratified_quotas(counts.tolist(), int(budget))

        pick_rows: list[np.ndarray] = []
        pick_weights: list[np.ndarray] = []
        cluster_sizes: dict[int, list[int]] = {}
        per_class: dict[int, int] = {}
        refilled = 0
        for ci, (c, k) in enumerate(zip(classes.tolist(), quotas, strict=True)):
            local = torch.nonzero(labels == c).reshape(-1).numpy()
            if local.size <= k:
                picks, weights = np.arange(local.size), np.ones(local.size)
                sizes = np.ones(local.size, dtype=np.int64)
            else:
                # Distinct, reproducible seed per class (faiss takes a 32-bit int).
                class_seed = (int(seed) * 1000003 + ci) % (2**31 - 1)
                picks, weights, sizes, n_empty = self._cluster_class(x[local], k, class_seed)
                refilled += n_empty
            pick_rows.append(local[picks])
            pick_weights.append(weights)
            cluster_sizes[int(c)] = sizes.tolist()
            per_class[int(c)] = int(picks.size)

        sel_local = np.concatenate(pick_rows)
        sel = rows[torch.from_numpy(sel_local)]
        weights = torch.from_numpy(np.concatenate(pick_weights)).to(torch.float64)
        n = rows.numel()
        all_sizes = np.concatenate([np.asarray(s) for s in cluster_sizes.values()])
        return SubsetSelection(
            ids=pool.ids[sel].clone(),
            weights=weights,
            diagnostics={
                "sampler": self.name,
                "pool_size": n,
                "budget": int(budget),
                "unique_picks": int(np.unique(sel_local).size),
                "per_class_counts": per_class,
                "pool_class_counts": {int(c): int(m) for c, m in zip(classes, counts, strict=True)},
                "cluster_sizes": cluster_sizes,
                "empty_clusters_refilled": refilled,
                # Fraction of the eligible pool that sits in a cluster with a representative.
                "coverage": float(weights.sum()) / n,
                "largest_cluster_fraction": float(all_sizes.max()) / n,
            },
        )


class FeatureSampler(ClusterSampler):
    """Class-stratified k-means on the captured features (the input of the chosen layer)."""

    name = "feature"

    def __init__(
        self,
        spherical: bool = False,
        pca_dim: int | None = None,
        kmeans_pp: bool = False,
        niter: int = 20,
        max_points_per_centroid: int = 256,
        num_threads: int | None = None,
    ) -> None:
        super().__init__(
            "features",
            spherical=spherical,
            pca_dim=pca_dim,
            kmeans_pp=kmeans_pp,
            niter=niter,
            max_points_per_centroid=max_points_per_centroid,
            num_threads=num_threads,
        )


class LogitSampler(ClusterSampler):
    """Class-stratified k-means on logits (``space="logits"``) or log-softmax outputs."""

    name = "logit"

    def __init__(
        self,
        space: Literal["logits", "log_softmax"] = "logits",
        spherical: bool = False,
        pca_dim: int | None = None,
        kmeans_pp: bool = False,
        niter: int = 20,
        max_points_per_centroid: int = 256,
        num_threads: int | None = None,
    ) -> None:
        super().__init__(
            "logits",
            space=space,
            spherical=spherical,
            pca_dim=pca_dim,
            kmeans_pp=kmeans_pp,
            niter=niter,
            max_points_per_centroid=max_points_per_centroid,
            num_threads=num_threads,
        )


_SMALL_KMEANS_WORK = 5e7

_SAMPLERS: dict[str, type] = {
    "random": RandomSampler,
    "feature": FeatureSampler,
    "logit": LogitSampler,
}


def get_sampler(name: str, **kwargs: Any) -> Sampler:
    """Build a sampler by name: ``"random"``, ``"feature"`` or ``"logit"``."""
    key = name.lower().strip()
    if key not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(_SAMPLERS)}")
    return _SAMPLERS[key](**kwargs)
