import copy
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spinning on a shared CPU


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Built hosts are shared between tests (and with the demo): built once, on demand."""
    return ROOT / "models"


@pytest.fixture
def tiny_spec(tmp_path, models_dir):
    """The tiny sweep spec as a dict, writing into tmp_path; write_spec(d) saves it as YAML."""
    d = yaml.safe_load((ROOT / "tests" / "specs" / "tiny.yaml").read_text())
    d["output_dir"] = str(tmp_path / "sweep")
    d["models_dir"] = str(models_dir)
    return copy.deepcopy(d)


@pytest.fixture
def write_spec(tmp_path):
    def write(d, name="spec.yaml") -> Path:
        p = tmp_path / name
        p.write_text(yaml.safe_dump(d))
        return p

    return write
