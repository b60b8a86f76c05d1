"""CNN global descriptors: torchvision trunk, average or GeM pooling, L2-normalised."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch

from .backbones import DEFAULT_BACKBONE, FEATURE_DIMS, load_backbone, weights_id
from .extractor import FeatureExtractor
from .onnx_trunk import OnnxTrunk

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
POOLINGS = ("avg", "gem")
#: How the trunk runs. Both give the same vectors (to ~1e-5); ONNX Runtime is 1.4-4x faster on CPU
#: (README, inference runtimes), so it is the default.
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


def gem_pool(features: torch.Tensor, p: float) -> torch.Tensor:
    """Generalised-mean pooling over the spatial dimensions (p=1 is average pooling)."""
    return features.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class Embedder(FeatureExtractor):
    """Turns images into L2-normalised descriptors with a torchvision CNN trunk."""

    def __init__(self, config: EmbedderConfig | None = None, **overrides):
        self.config = config or EmbedderConfig(**overrides)
        if self.config.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.config.pooling!r}")
        if self.config.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.config.runtime!r}")
        self.model = load_backbone(self.config.backbone, self.config.weights)
        self.trunk = self.model
        if self.config.runtime == "onnxruntime":
            self.trunk = OnnxTrunk(self.model, self.config.image_size, self.config.backbone)
        self.dim = FEATURE_DIMS[self.config.backbone]
        self.batch_size = self.config.batch_size
        self.min_side = self.config.image_size
        self.label = f"embed {self.config.backbone}"
        self.model_id = f"{self.config.backbone}/{weights_id(self.config.backbone, self.config.weights)}"

    def describe(self) -> dict:
        config = asdict(self.config)
        for setting in ("batch_size", "runtime"):  # do not change the vectors
            config.pop(setting)
        return {"type": "cnn", **config, "model_id": self.model_id, "dim": self.dim}

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Resize an RGB uint8 image to the square network input (area interpolation)."""
        size = self.config.image_size
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)

    @staticmethod
    def network_input(batch: np.ndarray) -> torch.Tensor:
        """(B, S, S, 3) uint8 -> (B, 3, S, S) float, ImageNet-normalised."""
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - _MEAN) / _STD

    def feature_maps(self, batch: np.ndarray) -> torch.Tensor:
        """(B, S, S, 3) uint8 -> the trunk's last feature maps (B, dim, h, w)."""
        return self.trunk(self.network_input(batch))

    @torch.inference_mode()
    def forward(self, batch: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, dim) float32 unit vectors."""
        features = self.feature_maps(batch)
        if self.config.pooling == "avg":
            pooled = features.mean(dim=(2, 3))
        else:
            pooled = gem_pool(features, self.config.gem_p)
        return torch.nn.functional.normalize(pooled, dim=1).numpy().astype(np.float32)
