import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def weights_root(tmp_path_factory) -> Path:
    """A weights folder of small real Keras models with cards, for both tasks."""
    from tests.model_factory import write_weights

    return write_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a clean skip where this machine has none (e.g. a user's laptop)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data sets not present at {SHARED_DATA}")
    return SHARED_DATA


def pytest_sessionfinish(session, exitstatus):
    """Let background work that runs TensorFlow (model warm-ups, loaders) finish before the interpreter does.

    A thread still inside TensorFlow when Python finalises aborts the whole process, exit status and all.
    """
    import threading

    for thread in threading.enumerate():
        if thread.name == "lungviz-warm-up":  # (idle loader threads wait on a queue, outside TensorFlow)
            thread.join(timeout=120)
