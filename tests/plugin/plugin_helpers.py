"""Helpers for the FiftyOne plugin / brain backend tests: a small real Caltech-101 subset."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CALTECH = SHARED / "data" / "caltech101" / "101_ObjectCategories"
TORCH_HOME = SHARED / "models" / "torch"
CLASSES = ("airplanes", "Faces", "Leopards", "watch")
PER_CLASS = 6
#: The prefix of this plugin's operator URIs (fiftyone.yml's name).
URI = "@revsearch/revsearch/"
MODEL = {"backbone": "mobilenet_v2", "weights": "IMAGENET1K_V1"}

#: The plugin tests need the team share's real images and weights (``conftest`` skips them otherwise).
SHARED_AVAILABLE = CALTECH.is_dir() and (TORCH_HOME / "hub" / "checkpoints").is_dir()
if SHARED_AVAILABLE:
    os.environ["TORCH_HOME"] = str(TORCH_HOME)

import fiftyone as fo  # noqa: E402  (after TORCH_HOME is set)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_dataset(prefix: str, files: list[str]) -> fo.Dataset:
    """A new dataset with one sample per file, labelled with its class folder."""
    dataset = fo.Dataset(unique_name(prefix))
    dataset.add_samples(
        [fo.Sample(filepath=f, ground_truth=fo.Classification(label=Path(f).parent.name)) for f in files]
    )
    return dataset


def subprocess_env() -> dict:
    """Environment for child Python processes: this repo importable, same FiftyOne database."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env
