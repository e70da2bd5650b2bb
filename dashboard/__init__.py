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


@functools.cache
def draw_the_demo_early() -> None:
    """A new server's first page that reads the bundled demo starts drawing its world, when missing, before
    this process imports the page's libraries (2-3 s): the embedding pass, which waits for the world, then
    waits that much less (a fresh install's first page, bench/RESULTS.md). Once per process; the pass
    waits for the same drawing (toydomains.draw_demo_data_elsewhere)."""
    from clip_icm.toydomains import draw_demo_data_elsewhere

    draw_demo_data_elsewhere()
