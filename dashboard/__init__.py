"""The Streamlit dashboard: a thin shell over clip_icm.service (run: streamlit run dashboard/app.py)."""
import functools
from pathlib import Path

FAVICON = Path(__file__).with_name("favicon.png")


@functools.cache
def one_blas_thread() -> None:
    """background.one_blas_thread in the dashboard's own process, once: app.py runs on every page run, and
    looking the BLAS libraries up again took 1.5 ms of each."""
    from clip_icm import background

    background.one_blas_thread()
