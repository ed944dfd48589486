"""lightning_influence: influence functions and unlearning as Lightning callbacks.

The pipeline, one module each, in one folder per part of the work (``data/``, ``sample/``,
``solve/``, ``unlearn/``, ``measure/``, ``attribution/``, ``callbacks/``; every public name is
re-exported here): read → capture → sample → select → solve → step → measure.

- capture:  :class:`CaptureCallback`, :func:`capture_pool` (features/logits/ids per sample)
- sample:   :func:`get_sampler` (``random`` | ``feature`` | ``logit``) picks the Hessian subset
- select:   :func:`select_parameters` chooses the output units allowed to move
- solve:    :func:`influence` (GIF/FIF/PIF/IF with krylov | lissa | dense solvers)
- step:     :func:`step_search` steps along Δθ, scored on validation data
- measure:  :func:`unlearning_metrics`, :func:`evaluate_forgetting` (torchmetrics)
- explain:  :func:`influence_scores`, :func:`self_influence` (EK-FAC or exact curvature),
  :class:`InfluenceCallback` (the training samples behind the worst validation errors)

:class:`UnlearnCallback` runs the whole pipeline after ``Trainer.fit``.
"""

from lightning_influence.attribution.dynamics import MarginCallback
from lightning_influence.attribution.explain import Explanation, InfluenceCallback
from lightning_influence.attribution.scores import ScoreArguments, influence_scores, self_influence
from lightning_influence.callbacks.unlearn import UnlearnCallback, UnlearnReport
from lightning_influence.data.batches import (
    Batch,
    IndexedDataset,
    ParsedBatch,
    as_batches,
    parse_batch,
)
from lightning_influence.data.model_task import ModelTask
from lightning_influence.measure.metrics import (
    ExclusiveLoss,
    ForgetAccuracy,
    ForgettingF1,
    RetainedAccuracy,
    SelfLoss,
    UnlearningMetrics,
    forgetting_f1,
    unlearning_metrics,
)
from lightning_influence.measure.metrics import evaluate as evaluate_forgetting
from lightning_influence.sample.capture import (
    CaptureCallback,
    CaptureResult,
    capture_pool,
    find_feature_module,
)
from lightning_influence.sample.sampling import (
    FeatureSampler,
    LogitSampler,
    RandomSampler,
    Sampler,
    SubsetSelection,
    get_sampler,
)
from lightning_influence.solve.curvature import (
    GaussNewtonOperator,
    HessianOperator,
    default_loss,
    mean_gradient,
)
from lightning_influence.solve.ekfac import EKFACOperator, fit_ekfac
from lightning_influence.solve.estimators import ESTIMATORS
from lightning_influence.solve.influence import InfluenceReport, influence
from lightning_influence.solve.solvers import ConvergenceWarning, SolveReport
from lightning_influence.unlearn import settings as _settings
from lightning_influence.unlearn.forget import (
    BackdoorRepair,
    ClassRemoval,
    ForgetSpec,
    LabelChange,
    SampleRemoval,
)
from lightning_influence.unlearn.pipeline import run_unlearning
from lightning_influence.unlearn.report import CandidateResult
from lightning_influence.unlearn.selection import select_parameters, selectable_layers
from lightning_influence.unlearn.settings import *  # noqa: F403  (the settings groups, settings.__all__)
from lightning_influence.unlearn.step import StepOutcome, StepResult, step_search

__version__ = "0.1.0"

__all__ = [
    *_settings.__all__,
    "BackdoorRepair",
    "Batch",
    "CandidateResult",
    "ClassRemoval",
    "ForgetSpec",
    "LabelChange",
    "ModelTask",
    "SampleRemoval",
    "run_unlearning",
    "ESTIMATORS",
    "EKFACOperator",
    "Explanation",
    "InfluenceCallback",
    "MarginCallback",
    "ScoreArguments",
    "fit_ekfac",
    "influence_scores",
    "self_influence",
    "CaptureCallback",
    "CaptureResult",
    "ConvergenceWarning",
    "ExclusiveLoss",
    "FeatureSampler",
    "ForgetAccuracy",
    "ForgettingF1",
    "GaussNewtonOperator",
    "HessianOperator",
    "IndexedDataset",
    "InfluenceReport",
    "LogitSampler",
    "ParsedBatch",
    "RandomSampler",
    "RetainedAccuracy",
    "Sampler",
    "SelfLoss",
    "SolveReport",
    "StepOutcome",
    "StepResult",
    "SubsetSelection",
    "UnlearnCallback",
    "UnlearnReport",
    "UnlearningMetrics",
    "as_batches",
    "capture_pool",
    "default_loss",
    "evaluate_forgetting",
    "find_feature_module",
    "forgetting_f1",
    "get_sampler",
    "influence",
    "mean_gradient",
    "parse_batch",
    "select_parameters",
    "selectable_layers",
    "step_search",
    "unlearning_metrics",
]
