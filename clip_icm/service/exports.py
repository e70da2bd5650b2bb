"""Downloads: the projection (.npz), the accuracy table (.csv) and figures as PNG when kaleido can."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from clip_icm.embeddings import EmbeddingSet
from clip_icm.service.fitting import Fit

def projection_npz(fitted: Fit, emb: EmbeddingSet, model: str) -> bytes:
    """The fitted projection with everything needed to know what it is."""
    buf = io.BytesIO()
    eigen = fitted.eigenvalues
    np.savez(
        buf, components=fitted.projection.components_, eigenvalues=eigen if eigen is not None else np.zeros(0),
        K=fitted.K, lam=fitted.lam, lam_mode=fitted.lam_mode, method=fitted.method, target=fitted.target,
        lam_effective=getattr(fitted.projection, "lam_effective_", fitted.lam),
        model=model, data_key=emb.key, invariance_ratio=fitted.invariance_ratio,
        class_names=np.asarray(emb.class_names), domains=np.asarray(emb.domain_names),
    )
    return buf.getvalue()


def accuracy_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode()


def png_available() -> bool:
    """Static PNG export needs kaleido (and its browser); offline without it we skip PNGs."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return True


def figure_png(fig) -> bytes | None:
    """PNG bytes of a plotly figure, or None when static export does not work here."""
    if not png_available():
        return None
    try:
        return fig.to_image(format="png", scale=2)
    except Exception:  # kaleido failing to find or start a browser has no single error type
        return None
