"""Load a folder of images as a FiftyOne dataset and open the App with the revsearch plugin.

    FIFTYONE_PLUGINS_DIR=~/fiftyone-plugins .venv/bin/python examples/app.py photos/ [--name photos]

Then, in the App: operator browser (backtick key) -> "revsearch: build index", select an image ->
"revsearch: search by image" (or upload one / give a path or URL).

The App keeps running until Ctrl-C, also while no browser tab is open (reloading a tab is fine).
Long operators can be *scheduled* from their Execute menu: this script turns on FiftyOne's local
("legacy") orchestrator for that, and ``fiftyone delegated launch`` in another terminal runs them.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", "true")  # before fiftyone reads its config

import fiftyone as fo  # noqa: E402

import revsearch.fiftyone.brain  # noqa: F401, E402  (registers the "revsearch" similarity backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--name", help="dataset name (default: the folder name)")
    parser.add_argument("--port", type=int, default=5151)
    parser.add_argument("--address", default="0.0.0.0", help="interface to serve on (default: all)")
    args = parser.parse_args()
    name = args.name or args.folder.rstrip("/").split("/")[-1]
    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
    else:
        dataset = fo.Dataset.from_dir(args.folder, dataset_type=fo.types.ImageDirectory, name=name, recursive=True)
        dataset.persistent = True
    print(f"dataset {name!r}: {len(dataset)} samples; open http://localhost:{args.port}")
    # wait=-1: serve until Ctrl-C; the default (3 s) would exit as soon as a tab is reloaded or closed
    fo.launch_app(dataset, port=args.port, address=args.address).wait(-1)


if __name__ == "__main__":
    main()
