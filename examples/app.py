"""Load a folder of images as a FiftyOne dataset and open the App with the revsearch plugin.

    FIFTYONE_PLUGINS_DIR=~/fiftyone-plugins .venv/bin/python examples/app.py photos/ [--name photos]

Then, in the App: operator browser (backtick key) -> "revsearch: build index", select an image ->
"revsearch: search by image" (or upload one / give a path or URL).
"""

from __future__ import annotations

import argparse

import fiftyone as fo

import revsearch.brain_backend  # noqa: F401  (registers the "revsearch" similarity backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--name", help="dataset name (default: the folder name)")
    parser.add_argument("--port", type=int, default=5151)
    args = parser.parse_args()
    name = args.name or args.folder.rstrip("/").split("/")[-1]
    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
    else:
        dataset = fo.Dataset.from_dir(args.folder, dataset_type=fo.types.ImageDirectory, name=name,
                                      recursive=True)
        dataset.persistent = True
    print(f"dataset {name!r}: {len(dataset)} samples; open http://localhost:{args.port}")
    fo.launch_app(dataset, port=args.port, address="0.0.0.0").wait()


if __name__ == "__main__":
    main()
