"""The right-hand side g of each solve, in one round or in several re-linearised rounds.

Unlearning moves the trained weights θ₀ towards the optimum of the *corrected* objective

    J(θ) = (1/N') [ Σ_{z∈R} ℓ(z; θ) + Σ_{z∈A} ℓ(z; θ) ],

R the retained samples, A the samples the correction adds (a corrected label, a repaired
backdoor sample; none for removal) and N' the corrected set's size. A Newton step from θ is
H⁻¹ g with g = −∇J(θ).

- **Round 1** (at θ₀): the trained model has ∇L_D(θ₀) ≈ 0, so Σ_R ∇ℓ(θ₀) = −Σ_U ∇ℓ(θ₀) and
  g₀ = (m/N') mean_U ∇ℓ(θ₀) − (k/N') mean_A ∇ℓ(θ₀) (U the m forgotten, A the k added
  samples). This is the classic influence right-hand side; it needs no pass over R.
- **Round k > 1** (at θ_k, after a kept step): ∇L_R(θ_k) is no longer −(m/|R|) mean_U ∇ℓ(θ₀):
  the step moved the retained samples' gradient too, and ignoring that (re-using the
  round-1 formula at θ_k) steers later rounds away from the retained data. The retained
  part is estimated with a control variate on the weighted Hessian subset B ⊂ R, whose
  weighted mean loss L_B estimates the mean retained loss:

      Σ_R ∇ℓ(θ_k) ≈ −Σ_U ∇ℓ(θ₀) + |R| (∇L_B(θ_k) − ∇L_B(θ₀)),

  so g_k = (m/N') mean_U ∇ℓ(θ₀) − (k/N') mean_A ∇ℓ(θ_k) − (|R|/N') (∇L_B(θ_k) − ∇L_B(θ₀)).

A round costs one gradient over B and one over A on top of the solve's HVPs.
"""

from __future__ import annotations

from torch import nn

from lightning_influence.data._modules import eval_mode
from lightning_influence.data.batches import Batch
from lightning_influence.data.forward import LossFn
from lightning_influence.solve import vectors as V
from lightning_influence.solve.curvature import mean_gradient
from lightning_influence.solve.influence import influence_gradient
from lightning_influence.solve.vectors import ParamDict

__all__ = ["RoundGradient"]


class RoundGradient:
    """g for round 1 at the trained weights, and for later rounds at the current weights.

    Args:
        model: the model at the trained weights θ₀ (the anchor terms are formed here).
        loss_fn: the mean-reduced loss.
        remove: the rows whose loss the correction removes (U).
        add: the rows whose loss it adds (A), or ``None``.
        retained: the weighted Hessian subset of retained rows (B), the estimate of L_R.
        remove_weight: m / N'.
        add_weight: k / N' (0 without added rows).
        retain_share: |R| / N' (1 for removal, (n − m) / n when the set keeps its size).
        rounds: how many rounds will be asked for (∇L_B(θ₀) is only formed when > 1).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        remove: list[Batch],
        add: list[Batch] | None,
        retained: list[Batch],
        remove_weight: float,
        add_weight: float,
        retain_share: float,
        rounds: int = 1,
    ) -> None:
        self.loss_fn, self.add, self.retained = loss_fn, add, retained
        self.add_weight, self.retain_share = add_weight, retain_share
        with eval_mode(model):
            self.removed = influence_gradient(model, loss_fn, remove, None, remove_weight)
            self.first = self._with_added(model, self.removed)
            self.anchor = self._retained_gradient(model) if rounds > 1 else None

    def _with_added(self, model: nn.Module, g: ParamDict) -> ParamDict:
        if self.add is None:
            return g
        added = mean_gradient(model, self.loss_fn, self.add, "add_data")
        return V.add(g, added, -self.add_weight)

    def _retained_gradient(self, model: nn.Module) -> ParamDict:
        return mean_gradient(model, self.loss_fn, self.retained, "hessian_data")

    def at(self, model: nn.Module, round_index: int) -> ParamDict:
        """g of round ``round_index`` (0-based) at the model's current weights."""
        if round_index == 0:
            return self.first
        if self.anchor is None:
            raise ValueError("RoundGradient was built for one round: pass rounds > 1.")
        with eval_mode(model):
            g = self._with_added(model, self.removed)
            moved = V.add(self._retained_gradient(model), self.anchor, -1.0)
        return V.add(g, moved, -self.retain_share)
