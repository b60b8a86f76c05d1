"""revsearch in FiftyOne: the Brain similarity backend ``revsearch``, a run's index and arrays, and
:mod:`revsearch.fiftyone.tools` (what the App's operators and notebooks call; importing it registers
the backend)."""
