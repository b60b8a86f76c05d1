"""CNN global descriptors: torchvision trunk, average or GeM pooling, L2-normalised.

Pre- and post-processing are NumPy; only the trunk differs between runtimes (an index's recorded weights
hash names a cached ONNX export, run without torch)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from revsearch.features.backbones import DEFAULT_BACKBONE, FEATURE_DIMS, load_backbone, weights_id
from revsearch.features.pca import l2_normalize
from revsearch.features.pipeline import FeatureExtractor
from revsearch.features.trunks import OnnxTrunk, TorchTrunk, export_cached, onnx_path, weights_digest

_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)
POOLINGS = ("avg", "gem")
#: How the trunk runs. Both give the same vectors (to ~1e-5); ONNX Runtime is 1.4-4x faster on CPU
#: (docs/benchmarks.md, inference runtimes), so it is the default.
RUNTIMES = ("onnxruntime", "torch")


@dataclass(frozen=True)
class EmbedderConfig:
    """Everything that determines the vectors."""

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = "DEFAULT"
    pooling: str = "gem"
    gem_p: float = 3.0
    image_size: int = 224
    batch_size: int = 32
    #: Default from $REVSEARCH_RUNTIME, so indexes re-opened from disk (CLI, FiftyOne) use it too.
    runtime: str = field(default_factory=lambda: os.environ.get("REVSEARCH_RUNTIME", "onnxruntime"))


def gem_pool(features, p: float):
    """Generalised-mean pooling (p=1: average) of a NumPy array or torch tensor (B, C, h, w) -> (B, C)."""
    if isinstance(features, np.ndarray):
        return np.power(np.power(np.maximum(features, 1e-6), p).mean(axis=(2, 3)), 1.0 / p)
    return features.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class Embedder(FeatureExtractor):
    """Turns images into L2-normalised descriptors with a torchvision CNN trunk."""

    def __init__(
        self,
        config: EmbedderConfig | None = None,
        *,
        digest: str | None = None,
        model_id: str | None = None,
        **overrides,
    ):
        """``digest`` / ``model_id``: the weights hash and id an index recorded; with them, a cached
        ONNX export is opened without building the torch model."""
        self.config = config or EmbedderConfig(**overrides)
        if self.config.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.config.pooling!r}")
        if self.config.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.config.runtime!r}")
        name, size = self.config.backbone, self.config.image_size
        if name not in FEATURE_DIMS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(FEATURE_DIMS)}")
        self._model, self._digest = None, digest
        cached = onnx_path(name, size, digest) if digest else None
        if self.config.runtime == "onnxruntime" and cached is not None and cached.exists():
            self.trunk = OnnxTrunk(cached)
        elif self.config.runtime == "onnxruntime":
            self._digest = weights_digest(self.model)  # the weights found now, whatever was recorded
            self.trunk = OnnxTrunk(export_cached(lambda: self.model, size, name, self._digest))
        else:
            self.trunk = TorchTrunk(self.model)
        self.dim = FEATURE_DIMS[name]
        self.batch_size = self.config.batch_size
        self.min_side = size
        self.label = f"embed {name}"
        self.model_id = model_id or f"{name}/{weights_id(name, self.config.weights)}"

    @property
    def model(self):
        """The torch trunk (built on first use: a query from a cached export never needs it)."""
        if self._model is None:
            self._model = load_backbone(self.config.backbone, self.config.weights)
        return self._model

    @property
    def digest(self) -> str:
        """Hash of the trunk's weights (names the cached ONNX export)."""
        if self._digest is None:
            self._digest = weights_digest(self.model)
        return self._digest

    def describe(self) -> dict:
        config = asdict(self.config)
        for setting in ("batch_size", "runtime"):  # do not change the vectors
            config.pop(setting)
        return {"type": "cnn", **config, "model_id": self.model_id, "weights_digest": self.digest, "dim": self.dim}

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Resize an RGB uint8 image to the square network input (area interpolation)."""
        size = self.config.image_size
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)

    @staticmethod
    def network_input(batch: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, 3, S, S) float32, ImageNet-normalised."""
        x = batch.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray((x - _MEAN) / _STD)

    def feature_maps(self, batch: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 -> the trunk's last feature maps (B, dim, h, w)."""
        return self.trunk(self.network_input(batch))

    def pool(self, features: np.ndarray) -> np.ndarray:
        """(B, dim, h, w) feature maps -> (B, dim) unit vectors (average or GeM pooling)."""
        gem = self.config.pooling == "gem"
        return l2_normalize(gem_pool(features, self.config.gem_p) if gem else features.mean(axis=(2, 3)))

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, dim) float32 unit vectors."""
        return self.pool(self.feature_maps(batch))
