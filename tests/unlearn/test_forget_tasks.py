"""The four forget tasks of UnlearnCallback end to end on digits, against retrained references.

Every model is trained once per module (``train_classifier``, 12 epochs, seed 0) and
deep-copied before unlearning. All acceptance numbers are measured on the *test* split; the
callback only sees the training and validation splits. The ``test_reference_*`` tests check
the reference side alone (that each corruption does damage a retrained or clean model does
not), so a failure there means the task setup, not the unlearning, is off.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_influence import IndexedDataset, UnlearnCallback
from lightning_influence.demos.corruptions import (
    accuracy,
    attack_success_rate,
    class_accuracies,
    corner_trigger,
    flip_labels,
    poison,
    random_ids,
    without_classes,
    without_ids,
)
from lightning_influence.demos.models import train_classifier
from lightning_influence.measure.metrics import evaluate
from lightning_influence.unlearn.selection import output_layer

torch.set_num_threads(1)

EPOCHS = 12
FORGET_CLASS = 3
FLIP_SOURCE, FLIP_DEST, FLIP_FRACTION = 3, 8, 0.5
BACKDOOR_TARGET, POISON_FRACTION = 0, 0.05
TRIGGER = corner_trigger(size=4, value=1.0, corner="bottom_right")


def fit(train: TensorDataset, val: TensorDataset | None) -> torch.nn.Module:
    return train_classifier(train, val, epochs=EPOCHS, seed=0, num_classes=10)


def unlearn(model, train: TensorDataset, val: TensorDataset, **task):
    """A deep copy of ``model`` unlearned with ``UnlearnCallback(**task)``, and the report."""
    model = copy.deepcopy(model)
    cb = UnlearnCallback(progress_bar=False, **task)
    report = cb.unlearn_model(
        model,
        DataLoader(IndexedDataset(train), batch_size=64),
        DataLoader(val, batch_size=256),
    )
    return model.eval(), report


def class_f1(model, test: TensorDataset, c: int) -> dict[str, float]:
    return evaluate(model, DataLoader(test, batch_size=512), [c])


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def clean_model(digits):
    train, val, _ = digits
    return fit(train, val)


@pytest.fixture(scope="module")
def retrained_without_class(digits):
    train, val, _ = digits
    return fit(without_classes(train, [FORGET_CLASS]), without_classes(val, [FORGET_CLASS]))


@pytest.fixture(scope="module")
def flipped(digits):
    """(noisy training data, {flipped id: true label}, model trained on the noisy data)."""
    train, val, _ = digits
    noisy, relabel = flip_labels(train, FLIP_SOURCE, FLIP_DEST, FLIP_FRACTION, seed=0)
    return noisy, relabel, fit(noisy, val)


@pytest.fixture(scope="module")
def poisoned(digits):
    """(poisoned training data, poisoned ids, {id: true label}, model trained on it)."""
    train, val, _ = digits
    data, ids, true_labels = poison(train, TRIGGER, BACKDOOR_TARGET, POISON_FRACTION, seed=0)
    return data, ids, true_labels, fit(data, val)


# ------------------------------------------------------------------ reference side alone


def test_reference_class_removal(digits, clean_model, retrained_without_class):
    _, _, test = digits
    before = class_f1(clean_model, test, FORGET_CLASS)
    ref = class_f1(retrained_without_class, test, FORGET_CLASS)
    print(
        f"\n[class ref] trained F1={before['f1']:.4f} retrained F1={ref['f1']:.4f} "
        f"(a_f={ref['forget_acc']:.4f}, a_r={ref['retain_acc']:.4f})"
    )
    assert ref["forget_acc"] <= 0.02 and ref["f1"] >= 0.95, (
        f"retrained-without-class model: a_f={ref['forget_acc']:.4f}, "
        f"a_r={ref['retain_acc']:.4f}, F1={ref['f1']:.4f}"
    )


def test_reference_label_flip_hurts(digits, clean_model, flipped):
    _, _, test = digits
    clean = class_accuracies(clean_model, test)
    corrupt = class_accuracies(flipped[2], test)
    print(
        f"\n[relabel ref] class {FLIP_SOURCE} acc: corrupted={corrupt[FLIP_SOURCE]:.4f} "
        f"clean={clean[FLIP_SOURCE]:.4f}; test acc corrupted={accuracy(flipped[2], test):.4f} "
        f"clean={accuracy(clean_model, test):.4f}"
    )
    assert clean[FLIP_SOURCE] - corrupt[FLIP_SOURCE] >= 0.3, (
        f"flipping {FLIP_FRACTION:.0%} of {FLIP_SOURCE}->{FLIP_DEST} left class "
        f"{FLIP_SOURCE} at {corrupt[FLIP_SOURCE]:.4f} (clean model {clean[FLIP_SOURCE]:.4f})"
    )


def test_reference_backdoor_works(digits, clean_model, poisoned):
    _, _, test = digits
    model = poisoned[3]
    asr = attack_success_rate(model, test, TRIGGER, BACKDOOR_TARGET)
    clean_asr = attack_success_rate(clean_model, test, TRIGGER, BACKDOOR_TARGET)
    print(
        f"\n[backdoor ref] {len(poisoned[1])} poisoned; ASR poisoned={asr:.4f} "
        f"clean={clean_asr:.4f}; test acc poisoned={accuracy(model, test):.4f} "
        f"clean={accuracy(clean_model, test):.4f}"
    )
    assert asr >= 0.8, f"backdoor does not work: ASR={asr:.4f} on the poisoned model"
    assert clean_asr <= 0.10, f"the trigger alone fools the clean model: ASR={clean_asr:.4f}"


# ------------------------------------------------------------------------- the four tasks


def test_class_removal_matches_retrained_f1(digits, clean_model, retrained_without_class):
    train, val, test = digits
    model, report = unlearn(clean_model, train, val, forget_classes=[FORGET_CLASS])
    before = class_f1(clean_model, test, FORGET_CLASS)
    after = class_f1(model, test, FORGET_CLASS)
    ref = class_f1(retrained_without_class, test, FORGET_CLASS)
    msg = (
        f"class {FORGET_CLASS} removal: F1 before={before['f1']:.4f} after={after['f1']:.4f} "
        f"retrained={ref['f1']:.4f}; a_f before={before['forget_acc']:.4f} "
        f"after={after['forget_acc']:.4f} retrained={ref['forget_acc']:.4f}; a_r "
        f"before={before['retain_acc']:.4f} after={after['retain_acc']:.4f} "
        f"retrained={ref['retain_acc']:.4f}; applied={report.applied}"
    )
    print("\n" + msg)
    assert abs(after["f1"] - ref["f1"]) <= 0.02, msg
    # the default moves the forgotten class's output unit only: the features stay
    head = output_layer(model, (test.tensors[0][:8], test.tensors[1][:8]))
    old = clean_model.state_dict()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, old[k])}
    assert report.applied and changed <= {f"{head}.weight", f"{head}.bias"}, changed
    assert "rounds" not in report.reason, report.reason  # forgot in round 1: stopped there
    assert report.selected_params == model.state_dict()[f"{head}.weight"].shape[1] + 1
    assert (report.solver["curvature"], report.damping) == ("hessian", 1e-3)


def test_class_removal_relinearises_when_one_step_falls_short(digits, clean_model):
    """Class removal's default rounds (3): a capped step that cannot forget in one
    linearisation is completed by the next rounds; one round alone leaves the class known."""
    train, val, test = digits
    capped = {"max_radius": 0.2}
    one, one_report = unlearn(
        clean_model, train, val, forget_classes=[FORGET_CLASS], step=capped, solve={"rounds": 1}
    )
    default, report = unlearn(clean_model, train, val, forget_classes=[FORGET_CLASS], step=capped)
    one_f1, f1 = class_f1(one, test, FORGET_CLASS), class_f1(default, test, FORGET_CLASS)
    assert one_report.applied and one_f1["forget_acc"] > 0.5, one_f1
    assert "rounds kept a step" in report.reason, report.reason
    assert f1["forget_acc"] <= 0.05 and f1["f1"] > one_f1["f1"] + 0.5, (one_f1, f1)
    assert f1["retain_acc"] >= one_f1["retain_acc"] - 0.01, (one_f1, f1)


@pytest.mark.parametrize("n_forget", [1, 50])
def test_sample_removal_keeps_test_accuracy(digits, clean_model, n_forget):
    train, val, test = digits
    ids = random_ids(len(train), n_forget, seed=1)
    model, report = unlearn(clean_model, train, val, forget_ids=ids)
    before, after = accuracy(clean_model, test), accuracy(model, test)
    # The retrained reference is reported, not asserted on: the criterion is "test accuracy
    # unchanged", and retraining without 1 or 50 of 1168 samples moves it by noise only.
    # Retrained only for 50 samples to keep the file fast (without the 1 sample, id 549, a
    # retrained model scored the same 0.9861 test accuracy as the trained one).
    ref = f"{accuracy(fit(without_ids(train, ids), val), test):.4f}" if n_forget > 1 else "-"
    forgotten = TensorDataset(*(t[torch.tensor(ids)] for t in train.tensors))
    msg = (
        f"removal of {n_forget} samples: test acc before={before:.4f} after={after:.4f} "
        f"retrained={ref}; train acc on the forgotten samples before="
        f"{accuracy(clean_model, forgotten):.4f} after={accuracy(model, forgotten):.4f}; "
        f"applied={report.applied}"
    )
    print("\n" + msg)
    assert abs(after - before) <= 0.01, msg
    # the field's membership measure is reported for id-based tasks, before and after
    for side in (report.before, report.after):
        assert 0.0 <= side["mia_efficacy"] <= 1.0, side


@pytest.mark.parametrize("seed", range(1, 6))
def test_deleting_typical_samples_does_not_forget_past_unseen_data(digits, clean_model, seed):
    """20 random training digits: a model that never saw them still predicts nearly all of
    them (held-out digits: 0.97-0.99). Without the over-forgetting guard the response descent
    took seed 2 from 1.00 to 0.80 forget accuracy (its floor 0.888); with it the
    kept point never falls below the floor the report gives (measured on these seeds: forget
    accuracy 1.00 after, floors 0.84-0.96)."""
    train, val, test = digits
    ids = random_ids(len(train), 20, seed=seed)
    model, report = unlearn(clean_model, train, val, forget_ids=ids)
    forgotten = TensorDataset(*(t[torch.tensor(ids)] for t in train.tensors))
    after, floor = accuracy(model, forgotten), report.after["forget_floor"]
    drop = accuracy(clean_model, test) - accuracy(model, test)
    assert after >= floor > 0.5, (seed, after, floor)
    assert drop <= 0.01, (seed, drop)


MEMORISED_FRACTION, MEMORISED_EPOCHS = 0.03, 40


def memorised_flips(train: TensorDataset, seed: int) -> tuple[TensorDataset, torch.Tensor]:
    """``train`` with 3 % of its labels moved to another class at random (seeded), and
    those ids: a model trained long enough fits (memorises) most of them."""
    x, y = train.tensors
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(len(y), generator=gen)[: round(MEMORISED_FRACTION * len(y))]
    noisy = y.clone()
    noisy[ids] = (noisy[ids] + torch.randint(1, 10, (len(ids),), generator=gen)) % 10
    return TensorDataset(x, noisy), ids


@pytest.mark.parametrize("seed", range(5))
def test_sample_removal_forgets_memorised_labels(digits, seed):
    """Deleting samples the model memorised (flipped labels it fits) must unfit them: a
    model retrained without them predicts their true class (the flipped label on 0-3 % of
    them, measured on these seeds), doing nothing keeps 83-100 % fitted. The loss alone
    called forgetting complete before any step here (their median loss was already above
    held-out data's), so nothing happened; measured after the fix on these 5 seeds: 11-26 %
    still fitted, test accuracy -0.006 to +0.006."""
    train, val, test = digits
    noisy, ids = memorised_flips(train, seed)
    base = train_classifier(noisy, val, epochs=MEMORISED_EPOCHS, seed=0, num_classes=10)
    forgotten = TensorDataset(*(t[ids] for t in noisy.tensors))
    fitted_before = accuracy(base, forgotten)
    assert fitted_before >= 0.7, f"the set-up: the model fits only {fitted_before:.2f}"
    model, report = unlearn(base, noisy, val, forget_ids=ids.tolist())
    fitted_after = accuracy(model, forgotten)
    drop = accuracy(base, test) - accuracy(model, test)
    msg = f"seed {seed}: fitted {fitted_before:.3f} -> {fitted_after:.3f}, test acc -{drop:.4f}"
    assert report.applied and report.before["memorised"] > 0, msg
    assert fitted_after <= 0.5 * fitted_before, msg
    assert drop <= 0.015, msg


def test_response_descent_is_skipped_when_asked_and_the_rounds_completed_forgetting(
    digits, clean_model
):
    """Class removal completes in its rounds: with response.skip_when_complete the descent
    is skipped; by default it runs, from the completed step."""
    train, val, _ = digits
    _, skipped = unlearn(clean_model, train, val, forget_classes=[FORGET_CLASS],
                         response={"steps": 8, "skip_when_complete": True})  # fmt: skip
    assert skipped.applied and skipped.after["forget_acc"] == 0.0
    assert "response" not in skipped.seconds and skipped.outcome == "complete"
    _, ran = unlearn(clean_model, train, val, forget_classes=[FORGET_CLASS],
                     response={"steps": 8})  # fmt: skip
    assert ran.seconds["response"] > 0.0 and ran.after["forget_acc"] == 0.0
    assert ran.outcome in ("response_kept", "no_improvement")  # the last search: the descent


def test_mia_efficacy_is_reported_for_the_budget_completion_too(digits, clean_model):
    """The pipeline adds MIA-efficacy to before/after whatever the sample-removal scorer."""
    train, val, _ = digits
    model = copy.deepcopy(clean_model)
    cb = UnlearnCallback(progress_bar=False, forget_ids=random_ids(len(train), 20, seed=2))
    cb.spec.completion = "budget"
    report = cb.unlearn_model(
        model, DataLoader(IndexedDataset(train), batch_size=64), DataLoader(val, batch_size=256)
    )
    for side in (report.before, report.after):
        assert 0.0 <= side["mia_efficacy"] <= 1.0, side
    assert "forget_confidence" in report.before


def test_label_change_recovers_flipped_class(digits, clean_model, flipped):
    _, val, test = digits
    noisy, relabel, corrupted = flipped
    model, report = unlearn(corrupted, noisy, val, relabel=relabel)
    clean = class_accuracies(clean_model, test)
    before = class_accuracies(corrupted, test)
    after = class_accuracies(model, test)
    others = torch.arange(10) != FLIP_SOURCE
    gap = float(clean[FLIP_SOURCE] - before[FLIP_SOURCE])
    recovered = float(after[FLIP_SOURCE] - before[FLIP_SOURCE])
    # Other classes have ~36 test images each (one image = 0.028), so the 0.02 bound is on
    # the mean accuracy over the nine other classes; the largest single drop is printed too.
    other_drop = float(before[others].mean() - after[others].mean())
    worst = int(torch.argmax(before - after).item())
    msg = (
        f"relabel {len(relabel)} flipped {FLIP_SOURCE}->{FLIP_DEST} back: class {FLIP_SOURCE} "
        f"acc corrupted={before[FLIP_SOURCE]:.4f} after={after[FLIP_SOURCE]:.4f} "
        f"clean={clean[FLIP_SOURCE]:.4f} (recovered {recovered:.4f} of gap {gap:.4f}); "
        f"other classes mean acc corrupted={before[others].mean():.4f} "
        f"after={after[others].mean():.4f} (drop {other_drop:.4f}; worst class {worst}: "
        f"{before[worst]:.4f}->{after[worst]:.4f}); applied={report.applied}"
    )
    print("\n" + msg)
    assert gap > 0.1, msg  # the corruption must do damage for the test to mean anything
    assert recovered >= 0.5 * gap, msg
    assert other_drop <= 0.02, msg


def test_label_change_holds_on_five_flip_seeds(digits, clean_model):
    """The label change's acceptance on flip seeds 0-4 (each its own corrupted model):
    every seed wins back at least half of class 3's gap, no seed costs the other classes more
    than 0.03 and the mean cost stays within the single-seed bound 0.02. Measured
    (benchmarks/results/corrections_relabel_keep.json, default): recovered 0.97-1.17, other
    classes 0.0063, 0.0127, 0.0063, 0.0095, 0.0190 (mean 0.0108); without the old-class
    floor seed 3 cost 0.0222."""
    train, val, test = digits
    clean = class_accuracies(clean_model, test)
    others = torch.arange(10) != FLIP_SOURCE
    drops = []
    for seed in range(5):
        noisy, relabel = flip_labels(train, FLIP_SOURCE, FLIP_DEST, FLIP_FRACTION, seed=seed)
        corrupted = fit(noisy, val)
        model, _ = unlearn(corrupted, noisy, val, relabel=relabel)
        before, after = class_accuracies(corrupted, test), class_accuracies(model, test)
        gap = float(clean[FLIP_SOURCE] - before[FLIP_SOURCE])
        recovered = float(after[FLIP_SOURCE] - before[FLIP_SOURCE]) / gap
        drops.append(float(before[others].mean() - after[others].mean()))
        print(f"\nflip seed {seed}: recovered {recovered:.4f}, other classes -{drops[-1]:.4f}")
        assert recovered >= 0.5 and drops[-1] <= 0.03, (seed, recovered, drops)
    assert sum(drops) / len(drops) <= 0.02, drops


@pytest.mark.parametrize("with_true_labels", [True, False], ids=["true_labels", "no_labels"])
def test_backdoor_repair(digits, clean_model, poisoned, with_true_labels):
    _, val, test = digits
    data, ids, true_labels, backdoored = poisoned
    extra = {"backdoor_true_labels": true_labels} if with_true_labels else {}
    asr_before = attack_success_rate(backdoored, test, TRIGGER, BACKDOOR_TARGET)
    acc_before = accuracy(backdoored, test)
    model, report = unlearn(
        backdoored,
        data,
        val,
        backdoor_trigger=TRIGGER,
        backdoor_target=BACKDOOR_TARGET,
        forget_ids=ids,
        **extra,
    )
    asr_after = attack_success_rate(model, test, TRIGGER, BACKDOOR_TARGET)
    acc_after = accuracy(model, test)
    msg = (
        f"backdoor repair ({len(ids)} poisoned, true labels {with_true_labels}): ASR "
        f"before={asr_before:.4f} after={asr_after:.4f} clean-model="
        f"{attack_success_rate(clean_model, test, TRIGGER, BACKDOOR_TARGET):.4f}; clean test "
        f"acc before={acc_before:.4f} after={acc_after:.4f} clean-model="
        f"{accuracy(clean_model, test):.4f}; applied={report.applied}"
    )
    print("\n" + msg)
    assert asr_before >= 0.8, msg  # the backdoor works before the repair
    assert report.damping == 0.1  # the task's own
    assert 0.0 <= report.after["mia_efficacy"] <= 1.0 and "mia_efficacy" in report.before
    assert acc_before - acc_after <= 0.03, msg
    # Without true labels the repair adds retained samples triggered with their own labels
    # (backdoor_repair_rows), so both variants must defeat the attack on unseen test inputs.
    # benchmarks/results/corrections_backdoor.json: this acceptance holds on 6 of 6 poison
    # seeds without labels (ASR <= 0.074) and 5 of 6 with them (seed 5: 0.39).
    assert asr_after <= 0.10, msg


@pytest.mark.parametrize("seed", range(1, 6))
def test_backdoor_repair_holds_on_five_more_poison_seeds(digits, seed):
    """The backdoor acceptance (attack success <= 0.10 on unseen test inputs, clean test
    accuracy lost <= 0.03) on poison seeds 1-5, with and without true labels. Measured
    (benchmarks/results/corrections_backdoor.json): attack success at most 0.0093, accuracy
    lost at most 0.0223. Seed 5 with true labels failed (0.39) while the response descent
    stopped at its first point below the retained-accuracy floor. One test per seed, so that
    parallel workers share them."""
    train, val, test = digits
    data, ids, true_labels = poison(train, TRIGGER, BACKDOOR_TARGET, POISON_FRACTION, seed=seed)
    backdoored = fit(data, val)
    acc_before = accuracy(backdoored, test)
    for extra in ({"backdoor_true_labels": true_labels}, {}):
        model, _ = unlearn(backdoored, data, val, backdoor_trigger=TRIGGER,
                           backdoor_target=BACKDOOR_TARGET, forget_ids=ids, **extra)  # fmt: skip
        asr = attack_success_rate(model, test, TRIGGER, BACKDOOR_TARGET)
        drop = acc_before - accuracy(model, test)
        assert asr <= 0.10 and drop <= 0.03, (seed, bool(extra), asr, drop)
