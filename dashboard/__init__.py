"""The Streamlit dashboard: a thin shell over clip_icm.service (run: streamlit run dashboard/app.py)."""
import functools


@functools.cache
def one_blas_thread() -> None:
    """BLAS builds already loaded (numpy's, scipy's) limited to one thread, once per process: app.py runs
    on every page run, and looking the libraries up again took 1.5 ms of each."""
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS build so that the limit covers it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
