"""Run a torchvision trunk with ONNX Runtime: the same vectors (to ~1e-5), faster on CPU.

The trunk is exported once, cached under ``$REVSEARCH_CACHE`` (default ``~/.cache/revsearch``) by a hash
of its weights, which an index records: a query opens the cached file without torch.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def cache_dir() -> Path:
    return Path(os.environ.get("REVSEARCH_CACHE", Path.home() / ".cache" / "revsearch")) / "onnx"


def onnx_path(name: str, image_size: int, digest: str) -> Path:
    """Where the export of trunk ``name`` with weights hash ``digest`` is cached."""
    return cache_dir() / f"{name}-{image_size}-{digest}.onnx"


def weights_digest(model) -> str:
    """A short hash of every parameter and buffer: the same weights give the same exported file."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def export_trunk(model, image_size: int, path: Path) -> None:
    """Export with a dynamic batch axis; written to a temporary name, then renamed (atomic)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            dynamo=False,
        )
    os.replace(tmp, path)


def export_cached(load_model: Callable[[], Any], image_size: int, name: str, digest: str) -> Path:
    """The cached export of the model ``load_model`` gives, whose weights hash is ``digest`` (the model is
    built and exported only if the file is missing)."""
    path = onnx_path(name, image_size, digest)
    if not path.exists():
        try:
            export_trunk(load_model(), image_size, path)
        except Exception as exc:
            raise RuntimeError(
                f"could not export {name} to ONNX at {path} ({exc}); set REVSEARCH_CACHE "
                "to a writable folder, or use runtime='torch'"
            ) from exc
    return path


class OnnxTrunk:
    """Callable like the torch trunk on arrays: (B, 3, S, S) float32 -> (B, C, h, w) feature maps."""

    def __init__(self, path: Path):
        try:
            import onnxruntime
        except ImportError as exc:
            raise ImportError("runtime='onnxruntime' needs `pip install onnxruntime onnx`") from exc
        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        # idle workers sleep instead of spinning, leaving the cores to the decoding threads
        # (MobileNetV2, Caltech files: 154 -> 168 img/s end to end here)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        inputs = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run(None, {"images": inputs})[0]


class TorchTrunk:
    """The torch model behind the same array interface as :class:`OnnxTrunk`."""

    def __init__(self, model):
        self.model = model

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()
