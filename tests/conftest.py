import sys
from pathlib import Path

import pytest
import torch

from lightning_influence.demos.datasets import digits_splits

# Tiny models run fastest single-threaded on the 2-core CI machine (and do not fight
# parallel jobs for cores).
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def digits():
    """scikit-learn digits: (train, val, test) TensorDatasets, split with seed 0 (a module's
    tests share one; a module may define its own ``digits``, e.g. loaders)."""
    return digits_splits(0)
