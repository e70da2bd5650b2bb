import os
import shutil
import sys
import tempfile

import pytest

# Nothing in the tests may reach a model hub: fail fast instead of hanging on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One fresh cache folder per test session: the tests neither write into the user's clip-icm cache
# nor read results an earlier run kept there (the store keeps layouts and fitted results too).
_CACHE = os.environ["CLIP_ICM_CACHE"] = tempfile.mkdtemp(prefix="clip-icm-tests-")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _main_module_restored():
    """AppTest runs a page as the module __main__ and leaves it there; multiprocessing's spawn then runs that
    script in every process a later test starts (an AppTest.from_function script fails there)."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random open_clip model (tests.tiny_clip) in a local-dir folder, one per test module."""
    from clip_icm.backend import ModelConfig
    from tests.tiny_clip import write_local_dir

    folder = write_local_dir(tmp_path_factory.mktemp("tiny"))
    return ModelConfig(f"local-dir:{folder}", pretrained="none", batch_size=4, num_workers=0)
