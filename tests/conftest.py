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


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory):
    """``make(config_file, schema, model_name) -> path``: a ``{'model': state_dict}`` file of a randomly initialised
    model of that (tiny) config, for ``--evaluate`` runs whose point is the data and the scoring, not the weights
    (``--evaluate`` refuses to run without a checkpoint that fills the whole model)."""
    import torch

    made: dict = {}

    def make(config_file, schema, model_name):
        from models.factory import create_model
        from utils.config import load_config
        from tasks.environment import prepare_text_encoder, resolve_data_root

        key = (str(config_file), str(schema), model_name)
        if key not in made:
            config = load_config(config_file, schema=schema)
            root = resolve_data_root(config)
            config["text_encoder"] = prepare_text_encoder(config, root)
            torch.manual_seed(0)
            model = create_model(model_name, config, root=root)
            path = tmp_path_factory.mktemp("random-checkpoints") / f"{model_name}.pth"
            torch.save({"model": model.state_dict()}, path)
            made[key] = path
        return str(made[key])

    return make


@pytest.fixture(scope="session")
def local_s3():
    """A real S3-compatible server for the session: moto's server in its own process on 127.0.0.1 and a free port
    (bench/local_s3.py), stopped at the end; the AWS_* variables point S3 clients, and child processes, at it."""
    pytest.importorskip("moto", reason="moto[server] (requirements-test.txt) provides the local S3 server")
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_local_s3", ROOT / "bench" / "local_s3.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with module.LocalS3() as server:
        yield server


@pytest.fixture
def s3_bucket(local_s3, request):
    """``s3://<a new bucket>`` on the session's local S3 server."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    return local_s3.make_bucket(name)


@pytest.fixture(autouse=True)
def torch_threads():
    """Every test ends with the process's torch thread count as it began: bench scripts run in-process set their own
    (bench/data_sources.py: 1), and a later test comparing an in-process run with a subprocess would then compare
    float sums reduced over different thread counts."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def default_read_policy():
    """Every test ends with the default policy for bad annotation records (a process-wide setting) and an empty
    read report."""
    yield
    from dataset.checked import configure_reading

    configure_reading({})


@pytest.fixture(scope="session")
def tiny_cclm_checkpoint(tmp_path_factory):
    """A randomly initialised tiny retrieval model (configs/tiny/itr_multi30k.yaml: 64 px, 4 text layers) on the
    200-image synthetic world, saved as our checkpoints are (``{'model', 'config'}``, the config with its prepared
    text encoder folder): ``(path, config, data root)``."""
    import torch

    from models.factory import create_model
    from tasks.environment import prepare_text_encoder, resolve_data_root
    from utils.config import load_config

    config = load_config(ROOT / "configs/tiny/itr_multi30k.yaml", schema=ROOT / "configs/base/retrieval.yaml")
    root = resolve_data_root(config)
    config["text_encoder"] = prepare_text_encoder(config, root)
    torch.manual_seed(0)
    model = create_model("cclm_retrieval", config, root=root)
    path = tmp_path_factory.mktemp("tiny-cclm") / "checkpoint_best.pth"
    torch.save({"model": model.state_dict(), "config": config}, path)
    return path, config, root
