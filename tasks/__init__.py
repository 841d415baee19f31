"""Tasks: the registry of ``run.py --task`` names, the flags, the one run sequence, and the task kinds (retrieval,
understanding, stream training, the demo) that the task scripts configure."""
