"""The synthetic world: a deterministic multilingual image-text dataset written in every real on-disk format.

``world`` writes it (``python3 -m dataset.synthetic --out DIR ...``; the layout is in its docstring), ``scenes``
renders the images, ``language`` holds the six template grammars, ``facts`` the statements that are true or false of
a scene, ``builders`` one writer per dataset, ``writers`` the file serialisations. The package may import the rest of
``dataset``; nothing else in ``dataset`` imports it.
"""
from dataset.synthetic.world import ensure_world, generate_world, read_manifest, world_paths

__all__ = ["ensure_world", "generate_world", "read_manifest", "world_paths"]
