import sys
from pathlib import Path

import torch

# Tiny models run fastest single-threaded on the 2-core CI machine (and do not fight
# parallel jobs for cores).
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
