"""``python3 -m dataset.synthetic --out DIR ...``: write a synthetic world (see dataset/synthetic/world.py)."""
import sys

from dataset.synthetic.world import main

sys.exit(main())
