#!/usr/bin/env python3
"""Image search with a CCLM model: index a folder of images, find the images that match text queries in any
language, rank captions for an image.

    python3 Search.py index --checkpoint CKPT --index INDEX --images FOLDER [FOLDER ...]
    python3 Search.py query --index INDEX --query "ein roter Kreis links" [--top-k 5] [--rerank-k 16]
    python3 Search.py query --index INDEX --queries queries.txt        (or a retrieval .json: recall@K)
    python3 Search.py caption --index INDEX --image photo.jpg --captions captions.txt
    python3 run.py --task search --checkpoint CKPT --opts search.command=index search.index=INDEX search.images=[DIR]

``Search.py COMMAND --help`` lists a command's options; configs/base/search.yaml the same as config keys. Results go
to stdout and to ``--output_dir`` (results.json, results.html with thumbnails). A bad input (an empty folder, a
corrupt image, a query file in another encoding, an index of another model, a missing tokenizer) ends with one line
naming it and exit code 2, and leaves an existing index as it was.
"""
from __future__ import annotations

import sys

from tasks.runner import run_script
from tasks.search import main as search_main


def main(argv=None) -> dict:
    """Run a search command with command-line arguments ``argv``; returns what results.json holds."""
    return search_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    run_script(main)
