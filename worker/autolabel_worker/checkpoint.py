"""Reading mmengine/mmdet checkpoints safely on torch >= 2.6.

torch 2.6 made ``torch.load`` default to ``weights_only=True``. Checkpoints written by
mmengine's Runner keep training metadata next to the weights (``HistoryBuffer`` objects
in the message hub, numpy scalars and arrays in the runtime info), which that unpickler
refuses. Instead of turning the safe unpickler off, we allow exactly the types mmengine
writes, so a checkpoint that smuggles in anything else is still refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from autolabel.errors import CheckpointError

log = logging.getLogger(__name__)


def _numpy_globals() -> list[Any]:
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


# HistoryBuffer pickles its statistics methods by reference, as getattr(HistoryBuffer, "mean").
# Allowing getattr is safe here: the restricted unpickler still calls only allow-listed
# callables, so an attribute fetched this way can be stored but never invoked.
MMENGINE_SAFE_GLOBALS: list[Any] = [HistoryBuffer, getattr, *_numpy_globals()]


def allow_mmengine_globals() -> None:
    """Let every ``torch.load`` in this process read mmengine checkpoints.

    mmengine's own loaders call ``torch.load`` without ``weights_only``; registering
    the allow-list process-wide keeps them working (for example when training resumes).
    """
    torch.serialization.add_safe_globals(MMENGINE_SAFE_GLOBALS)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file with the safe unpickler and mmengine's types allowed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        with torch.serialization.safe_globals(MMENGINE_SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError here
        raise CheckpointError(
            f"cannot read checkpoint {path}: {exc}. If it holds objects other than tensors "
            "and mmengine metadata, re-save it as a plain state_dict."
        ) from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint


@dataclass
class LoadReport:
    """What loading a state dict into a model left out, so a user can judge a checkpoint."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)


def state_dict_of(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint, whether it is a bare state dict or a Runner checkpoint."""
    state = checkpoint.get("state_dict", checkpoint)
    # Checkpoints saved from a DataParallel/DDP wrapper carry a "module." prefix.
    return {key.removeprefix("module."): value for key, value in state.items() if torch.is_tensor(value)}


def load_weights(
    model: torch.nn.Module, path: str | Path, *, skip_prefixes: Iterable[str] | None = None
) -> LoadReport:
    """Load a checkpoint's weights into ``model`` and report every key that did not fit.

    Keys under ``skip_prefixes`` (by default the model's own ``inference_skip_prefixes``) are
    parts of the checkpoint the model deliberately does not build (for example training-only
    auxiliary heads); they are listed, not loaded.
    """
    checkpoint = load_checkpoint(path)
    state = state_dict_of(checkpoint)
    if skip_prefixes is None:
        skip_prefixes = getattr(model, "inference_skip_prefixes", ())
    prefixes = tuple(skip_prefixes)
    report = LoadReport(meta=dict(checkpoint.get("meta") or {}))
    own = model.state_dict()
    loadable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if prefixes and key.startswith(prefixes):
            report.skipped.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.shape_mismatch.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            loadable[key] = value
    report.missing = sorted(set(own) - set(state))
    model.load_state_dict(loadable, strict=False)
    if report.skipped:
        log.info("checkpoint %s: skipped %d keys under %s", path, len(report.skipped), ", ".join(prefixes))
    return report
