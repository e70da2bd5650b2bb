import os
import shutil
import tempfile

# Nothing in the tests may reach a model hub: fail fast instead of hanging on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One fresh cache folder per test session: the tests neither write into the user's clip-icm cache
# nor read results an earlier run kept there (the store keeps layouts and fitted results too).
_CACHE = os.environ["CLIP_ICM_CACHE"] = tempfile.mkdtemp(prefix="clip-icm-tests-")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)

