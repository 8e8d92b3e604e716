"""mmengine 0.10.7 checkpoints load on torch >= 2.6 without turning the safe unpickler off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autolabel.errors import CheckpointError
from autolabel_worker.checkpoint import load_checkpoint, load_weights


class Toy(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None, mode: str = "tensor"):
        out = self.linear(inputs)
        if mode == "loss":
            return {"loss": ((out.squeeze(-1) - labels) ** 2).mean()}
        return out


class Points(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x = torch.tensor([float(index), 1.0])
        return {"inputs": x, "labels": x.sum()}


@pytest.fixture(scope="module")
def runner_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint written the way mmengine's Runner writes one, metadata and all."""
    work_dir = tmp_path_factory.mktemp("runner")
    runner = Runner(
        model=Toy(),
        work_dir=str(work_dir),
        train_dataloader=DataLoader(Points(), batch_size=4),
        train_cfg={"by_epoch": True, "max_epochs": 1},
        optim_wrapper={"optimizer": {"type": "SGD", "lr": 0.01}},
        default_hooks={"checkpoint": {"type": "CheckpointHook", "interval": 1}},
    )
    runner.train()
    state = {k: v.clone() for k, v in runner.model.state_dict().items()}
    return work_dir / "epoch_1.pth", state


def test_plain_torch_load_refuses_mmengine_checkpoint(runner_checkpoint) -> None:
    # A fresh interpreter: the refusal this shim exists for must still be there on this torch.
    path, _ = runner_checkpoint
    code = f"import torch; torch.load({str(path)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "weights_only" in result.stderr


def test_load_checkpoint_reads_metadata_and_weights(runner_checkpoint) -> None:
    path, state = runner_checkpoint
    checkpoint = load_checkpoint(path)
    assert checkpoint["meta"]["epoch"] == 1
    assert "log_scalars" in checkpoint["message_hub"]
    model = Toy()
    report = load_weights(model, path)
    assert report.clean, report
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_mmengine_own_loader_works_after_worker_import(runner_checkpoint) -> None:
    path, state = runner_checkpoint
    code = (
        "import torch, autolabel_worker\n"
        "from mmengine.runner import CheckpointLoader\n"
        f"ckpt = CheckpointLoader.load_checkpoint({str(path)!r})\n"
        "print(sorted(ckpt))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "'state_dict'" in result.stdout


class Smuggled:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_foreign_objects_are_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Toy().state_dict(), "extra": Smuggled()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_load_weights_reports_what_does_not_fit(tmp_path: Path) -> None:
    state = Toy().state_dict()
    state["linear.weight"] = torch.zeros(3, 2)
    state["aux_head.weight"] = torch.zeros(1)
    state["extra.weight"] = torch.zeros(1)
    del state["linear.bias"]
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": state}, path)
    report = load_weights(Toy(), path, skip_prefixes=["aux_head."])
    assert report.missing == ["linear.bias"]
    assert report.unexpected == ["extra.weight"]
    assert report.skipped == ["aux_head.weight"]
    assert report.shape_mismatch == [("linear.weight", (3, 2), (1, 2))]
    assert not report.clean


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
