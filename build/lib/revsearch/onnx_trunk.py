"""Run a torchvision trunk with ONNX Runtime: the same vectors (to ~1e-5), faster on CPU.

The trunk is loaded the standard torchvision way, exported to ONNX once and cached under
``$REVSEARCH_CACHE`` (default ``~/.cache/revsearch``), keyed by a hash of its weights.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


def cache_dir() -> Path:
    return Path(os.environ.get("REVSEARCH_CACHE", Path.home() / ".cache" / "revsearch")) / "onnx"


def weights_digest(model: nn.Module) -> str:
    """A short hash of every parameter and buffer: the same weights give the same exported file."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def export_trunk(model: nn.Module, image_size: int, path: Path) -> None:
    """Export with a dynamic batch axis; written to a temporary name, then renamed (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, dynamo=False)
    os.replace(tmp, path)


class OnnxTrunk:
    """Callable like the torch trunk: (B, 3, S, S) float tensor -> (B, C, h, w) feature maps."""

    def __init__(self, model: nn.Module, image_size: int, name: str):
        try:
            import onnxruntime
        except ImportError as exc:
            raise ImportError("runtime='onnxruntime' needs `pip install onnxruntime onnx`") from exc
        self.path = cache_dir() / f"{name}-{image_size}-{weights_digest(model)}.onnx"
        if not self.path.exists():
            try:
                export_trunk(model, image_size, self.path)
            except Exception as exc:
                raise RuntimeError(f"could not export {name} to ONNX at {self.path} ({exc}); set REVSEARCH_CACHE "
                                   "to a writable folder, or use runtime='torch'") from exc
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # idle workers sleep instead of spinning, leaving the cores to the decoding threads
        # (MobileNetV2, Caltech files: 154 -> 168 img/s end to end here)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        inputs = np.ascontiguousarray(images.numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {"images": inputs})[0])
