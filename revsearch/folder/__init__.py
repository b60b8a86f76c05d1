"""The folder index: a saved, updatable index of image files, crash-safe (manifest, generations,
journal, checkpoints, locks, atomic writes)."""
