import os
import threading

import pytest

# Nothing in the tests may reach a model hub: fail fast instead of hanging on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _umap_warm_up_finished():
    """The Explorer page (AppTest runs it in this process) starts UMAP's warm-up in a background
    thread: seconds of numba compilation that swap sys.stdout/stderr and the warning filters
    while they run, stealing the next test's captured output and warnings. Every test waits
    for it to end."""
    yield
    for thread in threading.enumerate():
        if thread.name == "umap-warm-up":
            thread.join()
