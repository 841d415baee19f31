"""The public Python API: ``cclm.load(checkpoint)`` gives a model that embeds and ranks images and texts in any
language (see cclm/api.py and the README's "Use a model from Python")."""
from cclm.api import CCLM, CheckpointError, Ranking, load

__all__ = ["CCLM", "CheckpointError", "Ranking", "load"]
