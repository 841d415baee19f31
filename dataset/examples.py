"""A map-style dataset over the examples read (and checked) from annotation files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from dataset.checked import AnnotationError


class ExampleDataset(Dataset):
    """The examples of one annotation file; item ``i`` is :meth:`item` of example ``i`` (images opened there)."""

    def __init__(self, path: str | os.PathLike, examples: list, transform: Callable, empty_message: str):
        if not examples:
            raise AnnotationError(f"{path}: {empty_message}")
        self.path, self.examples, self.transform = Path(path), examples, transform

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int):
        return self.item(self.examples[index])

    def item(self, example):
        """The model-ready item of one example."""
        raise NotImplementedError
