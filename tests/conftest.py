"""Shared pytest fixtures: locations of the development-only ../shared folder, offline settings."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Nothing may be fetched from a hub while testing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(os.environ.get("CCLM_SHARED", ROOT.parent / "shared"))


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: it exists only in the development checkout (../shared), not in a user's clone")
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The reference model's tiny golden fixture (skips where ../shared is absent)."""
    return _shared_path("golden", "cclm-tiny-ref")


@pytest.fixture(scope="session")
def iglue_sample() -> Path:
    """Real IGLUE annotation samples (skips where ../shared is absent)."""
    return _shared_path("data", "iglue-sample")


@pytest.fixture(scope="session")
def shared_docs() -> Path:
    """The specs and checkpoint key manifests (skips where ../shared is absent)."""
    return _shared_path("docs")


TOKENIZER_TEXTS = [
    "a red circle on the left", "a blue square on the right", "two green triangles", "one small yellow star",
    "ein roter kreis links", "ein blaues quadrat rechts", "zwei grüne dreiecke", "ein kleiner gelber stern",
    "un cercle rouge à gauche", "un carré bleu à droite", "deux triangles verts", "une petite étoile jaune",
    "červený kruh vlevo", "modrý čtverec vpravo", "dva zelené trojúhelníky", "jedna malá žlutá hvězda",
    "左に赤い丸があります", "右に青い四角があります", "緑の三角が二つあります", "小さい黄色い星が一つあります",
    "左边有一个红色的圆", "右边有一个蓝色的正方形", "两个绿色的三角形", "一个小的黄色星星",
]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A ~200-piece multilingual tokenizer in the XLM-R id layout, trained offline once per session."""
    from dataset.tokenizer import train_tokenizer

    return train_tokenizer(TOKENIZER_TEXTS * 5, tmp_path_factory.mktemp("tokenizer"), vocab_size=200)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    """The loaded tiny tokenizer."""
    from dataset.tokenizer import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)
