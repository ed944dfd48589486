"""GPU suite: class removal on the papers' architectures (VGG11, ResNet-18), against retraining.

Data: Fashion-MNIST padded to 32x32 and repeated to 3 channels (54,000 / 6,000 / 10,000), or
CIFAR-10 through torchvision when its files are present (``--cifar-root``; never downloaded).
Models: a CIFAR-style VGG11 (BatchNorm, 8 conv layers, one Linear head) and ResNet-18 (3x3
stem, no max-pool), both written here with a width multiplier so that a test can run the
same code path with a tiny ResNet on the CPU. One recipe trains the base model and the
retrained reference (Adam, early stopping on validation loss, best weights kept). The
unlearning is the ``UnlearnCallback`` default (``unlearn_model`` on the device); its report
gives the time per stage and the peak memory (``torch.cuda.max_memory_allocated`` on a GPU).
Test F1 is reported; everything is chosen on validation data.

Run (resumable; rows are written after every run)::

    python -m benchmarks run --suite gpu
    python -m benchmarks.gpu --archs vgg11 resnet18 --classes 0 2 4 6 --seeds 0 [--resume]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_influence as li
from benchmarks import markdown as md
from benchmarks.common import CACHE, RESULTS, machine, mean_std, write_json

RESULT = "gpu.json"
RECIPE = {"optimizer": "Adam", "lr": 1e-3, "batch_size": 128, "max_epochs": 30, "patience": 3}

# ----------------------------------------------------------------------------- models

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """CIFAR-style VGG (conv3x3-BN-ReLU stacks, max-pools, one Linear head) for 32x32 inputs."""

    def __init__(self, cfg=VGG11, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c_out = max(1, int(v * width))
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (3x3 stem, no max-pool); ``blocks=(2, 2, 2, 2)`` is ResNet-18."""

    def __init__(self, blocks=(2, 2, 2, 2), num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, c_in = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(c_in, c_out, 2 if i > 0 and j == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


ARCHS: dict[str, Callable[[], nn.Module]] = {
    "vgg11": lambda: VGG(VGG11),
    "resnet18": lambda: ResNet((2, 2, 2, 2)),
    # the same code path at test size (CPU): one block per stage, 4 channels at the stem
    "tiny_resnet": lambda: ResNet((1, 1, 1, 1), width=4),
}

# ----------------------------------------------------------------------------- data


def fashion32(seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Fashion-MNIST padded to 32x32, 3 channels (54,000 / 6,000 / 10,000)."""
    from lightning_influence.demos.datasets import fashion_mnist_splits

    return fashion_mnist_splits(seed=seed, pad_to_32=True, rgb=True)


def cifar10(root: str, seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """CIFAR-10 from torchvision's files under ``root`` (45,000 / 5,000 / 10,000; no download)."""
    from torchvision.datasets import CIFAR10

    def tensors(train: bool) -> tuple[Tensor, Tensor]:
        ds = CIFAR10(root, train=train, download=False)
        x = torch.tensor(ds.data).permute(0, 3, 1, 2).float() / 255
        return x, torch.tensor(ds.targets)

    x, y = tensors(True)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, tr = perm[:5000], perm[5000:]
    return (
        TensorDataset(x[tr], y[tr]),
        TensorDataset(x[val], y[val]),
        TensorDataset(*tensors(False)),
    )


def without(ds: TensorDataset, c: int) -> TensorDataset:
    keep = ds.tensors[1] != c
    return TensorDataset(ds.tensors[0][keep], ds.tensors[1][keep])


# ----------------------------------------------------------------------------- training


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _val_loss(model: nn.Module, val: TensorDataset, device: torch.device) -> float:
    model.eval()
    x, y = val.tensors
    total = torch.zeros((), device=device)
    for i in range(0, len(y), 1024):
        logits = model(x[i : i + 1024].to(device))
        total += F.cross_entropy(logits, y[i : i + 1024].to(device), reduction="sum")
    return float(total) / len(y)


def fit(
    arch: str, train: TensorDataset, val: TensorDataset, seed: int, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """The one recipe (``RECIPE``): Adam, early stopping on validation loss, best weights kept."""
    torch.manual_seed(seed)
    model = ARCHS[arch]().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
    loader = DataLoader(
        train,
        batch_size=RECIPE["batch_size"],
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    _sync(device)
    start = time.perf_counter()
    best, best_state, since, epochs = float("inf"), None, 0, 0
    while epochs < RECIPE["max_epochs"]:
        epochs += 1
        model.train()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            opt.step()
        loss = _val_loss(model, val, device)
        if loss < best - 1e-4:
            best, best_state, since = loss, copy.deepcopy(model.state_dict()), 0
        else:
            since += 1
            if since >= RECIPE["patience"]:
                break
    model.load_state_dict(best_state)
    _sync(device)
    info = {"seconds": time.perf_counter() - start, "epochs": epochs, "best_val_loss": best}
    return model.eval(), info


def cached_fit(
    name: str, arch: str, train, val, seed: int, device: torch.device, cache: Path | None
) -> tuple[nn.Module, dict[str, Any]]:
    """``fit`` once per name when ``cache`` is a folder (model and training seconds kept)."""
    if cache is None:
        return fit(arch, train, val, seed, device)
    cache.mkdir(parents=True, exist_ok=True)
    path, meta = cache / f"{name}.pt", cache / f"{name}.json"
    if path.exists() and meta.exists():
        model = ARCHS[arch]().to(device)
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return model.eval(), json.loads(meta.read_text())
    model, info = fit(arch, train, val, seed, device)
    torch.save(model.state_dict(), path)
    meta.write_text(json.dumps(info))
    return model, info


# ----------------------------------------------------------------------------- study


def _test_metrics(model: nn.Module, test: TensorDataset, c: int, device) -> dict[str, float]:
    out = li.evaluate_forgetting(model, DataLoader(test, batch_size=1024), [c], device=device)
    return {f"test_{k}": v for k, v in out.items()}


def unlearn_row(model: nn.Module, data, c: int, seed: int, device: torch.device) -> dict:
    """The callback default on a copy of the base model; its report's stages and memory."""
    train, val, test = data
    model = copy.deepcopy(model)
    cb = li.UnlearnCallback(forget_classes=[c], seed=seed, progress_bar=False)
    _sync(device)
    start = time.perf_counter()
    report = cb.unlearn_model(
        model,
        DataLoader(li.IndexedDataset(train), batch_size=256),
        DataLoader(val, batch_size=1024),
        device=device,
    )
    _sync(device)
    return {
        "method": "gif (default)",
        "seconds": time.perf_counter() - start,
        "stage_seconds": report.seconds,
        "peak_memory_bytes": report.peak_memory_bytes,
        "memory_kind": report.memory_kind,
        "applied": report.applied,
        "val_f1": report.after.get("f1") if report.after else None,
    } | _test_metrics(model, test, c, device)


def run(
    archs: list[str],
    classes: list[int],
    seeds: list[int],
    *,
    data_fn: Callable[[int], tuple[TensorDataset, TensorDataset, TensorDataset]] = fashion32,
    dataset: str = "fashion-mnist-32x32x3",
    device: torch.device | None = None,
    cache: Path | None = CACHE / "gpu",
    result: str = RESULT,
    resume: bool = False,
) -> dict[str, Any]:
    """Every (arch, seed, class): retrain and the default, rows written as they finish."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = RESULTS / result
    rows = json.loads(path.read_text())["rows"] if resume and path.exists() else []
    done = {(r["arch"], r["seed"], r["forget_class"], r["method"]) for r in rows}
    for seed in seeds:
        data = data_fn(seed)
        for arch in archs:
            tag = f"{dataset}_{arch}_seed{seed}"
            base, base_info = cached_fit(f"base_{tag}", arch, data[0], data[1], seed, device, cache)
            for c in classes:
                key = {"arch": arch, "seed": seed, "forget_class": c}
                if (arch, seed, c, "retrain") not in done:
                    model, info = cached_fit(
                        f"retrain_c{c}_{tag}", arch, without(data[0], c), without(data[1], c),
                        seed, device, cache,
                    )  # fmt: skip
                    row = {
                        "method": "retrain",
                        "seconds": info["seconds"],
                        "epochs": info["epochs"],
                    }
                    rows.append(key | row | _test_metrics(model, data[2], c, device))
                if (arch, seed, c, "gif (default)") not in done:
                    rows.append(key | unlearn_row(base, data, c, seed, device))
                write_json(result, _payload(rows, dataset, device, base_info))
                print(f"{arch} seed {seed} class {c}: done", flush=True)
    out = _payload(rows, dataset, device, None)
    write_json(result, out)
    return out


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arch: mean F1 of the default and of retraining, gap, time ratio, stage means."""
    out: dict[str, Any] = {}
    for arch in sorted({r["arch"] for r in rows}):
        pairs = []
        for r in rows:
            if r["arch"] == arch and r["method"] == "gif (default)":
                ref = [
                    q for q in rows
                    if q["method"] == "retrain"
                    and (q["arch"], q["seed"], q["forget_class"])
                    == (arch, r["seed"], r["forget_class"])
                ]  # fmt: skip
                if ref:
                    pairs.append((r, ref[0]))
        if not pairs:
            continue
        stages = sorted({k for r, _ in pairs for k in r["stage_seconds"]})
        out[arch] = {
            "runs": len(pairs),
            "f1_default": mean_std([r["test_f1"] for r, _ in pairs]),
            "f1_retrain": mean_std([q["test_f1"] for _, q in pairs]),
            "f1_gap_to_retrain": mean_std([q["test_f1"] - r["test_f1"] for r, q in pairs]),
            "unlearn_over_retrain_seconds": mean_std(
                [r["seconds"] / q["seconds"] for r, q in pairs]
            ),
            "unlearn_seconds": mean_std([r["seconds"] for r, _ in pairs]),
            "retrain_seconds": mean_std([q["seconds"] for _, q in pairs]),
            "stage_seconds": {
                s: mean_std([r["stage_seconds"].get(s, 0.0) for r, _ in pairs]) for s in stages
            },
            "peak_memory_bytes": max(r["peak_memory_bytes"] for r, _ in pairs),
            "memory_kind": pairs[0][0]["memory_kind"],
        }
    return out


def _payload(rows, dataset: str, device: torch.device, base_info) -> dict[str, Any]:
    return {
        "benchmark": "gpu",
        "command": "python -m benchmarks.gpu " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "device": str(device),
        "dataset": dataset,
        "recipe": RECIPE,
        "summary": _summary(rows),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    p.add_argument("--archs", nargs="+", default=["vgg11", "resnet18"], choices=sorted(ARCHS))
    p.add_argument("--classes", type=int, nargs="+", default=[0, 2, 4, 6])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cifar-root", default=None, help="CIFAR-10 files (torchvision layout)")
    p.add_argument("--resume", action="store_true", help="keep finished rows, run the rest")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA device: the GPU suite runs on the CPU (slow at full size).", flush=True)
    if a.cifar_root:
        root = a.cifar_root
        out = run(a.archs, a.classes, a.seeds, data_fn=lambda s: cifar10(root, s),
                  dataset="cifar10", result="gpu_cifar10.json", resume=a.resume)  # fmt: skip
    else:
        out = run(a.archs, a.classes, a.seeds, resume=a.resume)
    print(json.dumps(out["summary"], indent=2))


# ----------------------------------------------------------------------------- docs/benchmarks.md


def gpu_section(d: dict | None) -> list[str]:
    """VGG11 / ResNet-18 class removal vs retraining (benchmarks/gpu.py)."""
    title = "## GPU suite: VGG11 and ResNet-18 (Fashion-MNIST 32×32×3)"
    if not d or "cuda" not in d.get("device", ""):
        return [
            title,
            "",
            "**GPU numbers pending**: no GPU has been lent to this project yet. The suite "
            "(`python -m benchmarks run --suite gpu`) trains VGG11 and ResNet-18 by one recipe, "
            "retrains without each class and runs the callback default on the device, with the "
            "time per stage and the peak CUDA memory from the report. Its code path runs on "
            "the CPU in `tests/benchmark_smoke/test_benchmark_gpu_smoke.py` with a tiny ResNet.",
            "",
        ]
    out = [
        title,
        "",
        f"`{d['command']}` on {d['machine'].get('device', d['device'])}.",
        "",
        "| arch | runs | F1 default | F1 retrain | gap | unlearn s | retrain s | × retrain | peak memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, s in d["summary"].items():
        out.append(
            f"| {arch} | {s['runs']} | {md.ms(s['f1_default'])} | {md.ms(s['f1_retrain'])} | "
            f"{md.ms(s['f1_gap_to_retrain'])} | {md.ms(s['unlearn_seconds'], 1)} | "
            f"{md.ms(s['retrain_seconds'], 1)} | {md.ms(s['unlearn_over_retrain_seconds'])} | "
            f"{s['peak_memory_bytes'] / 2**20:.0f} MiB ({s['memory_kind']}) |"
        )
    return out + [""]


def render() -> list[str]:
    """This study's part of docs/benchmarks.md."""
    return gpu_section(md.load("gpu.json"))


if __name__ == "__main__":
    main()
