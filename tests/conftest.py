import copy
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lightning_influence.demos.datasets import digits_splits
from lightning_influence.demos.models import train_classifier

# Tiny models run fastest single-threaded on the 2-core CI machine (and do not fight
# parallel jobs for cores).
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def digits():
    """scikit-learn digits: (train, val, test) TensorDatasets, split with seed 0 (a module's
    tests share one; a module may define its own ``digits``, e.g. loaders)."""
    return digits_splits(0)


@pytest.fixture(scope="session")
def trained_digits() -> Callable[[int], torch.nn.Module]:
    """``trained_digits(epochs)``: a copy of the demo CNN trained on the digits split of
    ``digits`` (seed 0) for ``epochs`` epochs. Each epoch count is trained once per test
    process and shared by the modules that ask for it; every call returns its own copy."""
    models: dict[int, torch.nn.Module] = {}
    train, val, _ = digits_splits(0)

    def get(epochs: int) -> torch.nn.Module:
        if epochs not in models:
            models[epochs] = train_classifier(train, val, epochs=epochs, seed=0)
        return copy.deepcopy(models[epochs])

    return get
