"""Our embedding pipeline vs FiftyOne's own ``compute_embeddings`` with the same torchvision model.

    .venv/bin/python bench/fiftyone_embed.py [--images 256]

Both run MobileNetV2 (ImageNet weights, torchvision's IMAGENET1K_V1 file) on the same Caltech files
at batch size 32 and 224x224 inputs, producing the 1280-d average-pooled descriptor; FiftyOne's model
is a ``TorchImageModel`` built as its zoo's ``mobilenet-v2-imagenet-torch`` entry is. Reports
images/s for each, the ratio, and the mean cosine between the two sets of vectors (a sanity check
that the same thing is computed).
"""

from __future__ import annotations

import argparse
import uuid

import numpy as np
from common import Timer, caltech_split, markdown_table, seed_torch_cache, write_results


def fiftyone_model():
    import fiftyone.utils.torch as fout

    config = fout.TorchImageModelConfig(
        {
            "entrypoint_fcn": "torchvision.models.mobilenet_v2",
            "entrypoint_args": {"weights": "MobileNet_V2_Weights.IMAGENET1K_V1"},
            "output_processor_cls": "fiftyone.utils.torch.ClassifierOutputProcessor",
            "classes": [str(i) for i in range(1000)],
            "image_size": [224, 224],
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
            "embeddings_layer": "<classifier.1",
        }
    )
    return fout.TorchImageModel(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    args = parser.parse_args()
    seed_torch_cache()
    import fiftyone as fo

    from revsearch import Embedder, EmbedderConfig
    from revsearch.features.cnn import RUNTIMES

    train = [p for p, _ in caltech_split("train")]
    paths = train[:: max(1, len(train) // args.images)][: args.images]
    ours, seconds = {}, {}
    for runtime in RUNTIMES:
        embedder = Embedder(
            EmbedderConfig(
                backbone="mobilenet_v2", weights="IMAGENET1K_V1", pooling="avg", batch_size=32, runtime=runtime
            )
        )
        embedder.embed_paths(paths[:32], progress=False)  # warm-up
        with Timer() as t:
            ours[runtime] = embedder.embed_paths(paths, progress=False).vectors
        seconds[runtime] = t.seconds

    dataset = fo.Dataset(f"bench-{uuid.uuid4().hex[:8]}")
    try:
        dataset.add_samples([fo.Sample(filepath=p) for p in paths])
        model = fiftyone_model()
        dataset.limit(32).compute_embeddings(model, batch_size=32)  # warm-up
        with Timer() as t_fo:
            theirs = dataset.compute_embeddings(model, batch_size=32)
    finally:
        dataset.delete()
    theirs = np.asarray(theirs, dtype=np.float32)
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    rows = [
        {
            "images": len(paths),
            "revsearch runtime": runtime,
            "revsearch img/s": len(paths) / seconds[runtime],
            "FiftyOne compute_embeddings img/s": len(paths) / t_fo.seconds,
            "speed-up": t_fo.seconds / seconds[runtime],
            "mean cosine(ours, FiftyOne)": float((ours[runtime] * theirs).sum(axis=1).mean()),
        }
        for runtime in RUNTIMES
    ]
    write_results("fiftyone_embed", rows, markdown_table(rows, list(rows[0])), {"batch_size": 32})


if __name__ == "__main__":
    main()
