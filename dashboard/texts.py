"""The dashboard's longer texts (plain language, kept apart from the layout code)."""
from __future__ import annotations

import math
import re

# What makes Markdown or Streamlit read a name inside a sentence: links and Streamlit's
# ``:red[...]`` ([ ]), autolinks and HTML (< > &, the colon of http://, the @ of an e-mail
# address, the dot of www.), emphasis and code (* _ ~ `), maths ($), tables (|), icons and
# emoji (:material/...:, :smile:). The marks that act only at the start of a line (# - + 1.)
# never start these one-line messages.
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]<>&~:$|@])|(?<=www)(\.)", re.IGNORECASE)


def plain(text: str) -> str:
    """``text`` (a folder, class or domain name, or a message quoting one) for Streamlit's Markdown
    boxes (``st.error``, ``st.warning``...), each mark above backslash-escaped, so a name shows
    as typed and is never a link."""
    return _MARKDOWN_PUNCTUATION.sub(lambda mark: "\\" + mark.group(), text)


ABOUT = r"""
CLIP-ICM (Song et al., *Learning Invariant Causal Mechanism from Vision-Language Models*, ICML 2025)
models an image as generated from two kinds of hidden factors: **invariant** ones (what the object is:
its shape and parts) and **variant** ones (style, colour, background, lighting). The class depends
only on the invariant factors, but in the training domains the variant ones are often correlated with
the class, so a classifier on the full CLIP embedding learns shortcuts that break on a new domain.
The paper argues that CLIP's embedding is a linear, invertible function of these factors, so one
linear map can keep the invariant part and drop the rest. It works in three steps:

**1. Collect interventional pairs.** Pairs (x, x_do) with the same content and changed variant factors:
an image and a photometric edit of it (colour jitter, grayscale, blur, invert, posterize, solarize,
equalize; one chosen at random per pair, as in the released code), a caption and a rewrite of its
style or scene words (template banks here), or, in the bundled ToyDomains world, a true re-render of
the same object with another colour, background or style.

**2. Estimate the projection (closed form).** With Z the source-domain image embeddings and
Δ = Z − Z_do the pair differences,

  M = ZᵀZ/n − λ ΔᵀΔ/n, and A_inv = the eigenvectors of M with the **K largest** eigenvalues.

These directions carry much of the embedding's energy and move little under intervention
("reconstruct" + "consistent"). K and λ are the knobs; choose them on source data only. Plain
source validation cannot see a shortcut that is as predictive as the cause in every source
domain; the *interventional* rule also scores each setting on the source validation rows with
their variant factors changed, and keeps the worst of the two per domain.

**3. Predict in the invariant subspace.** Project image embeddings and the class prompts' text
embeddings with A_inv, re-normalise both, classify by cosine (zero-shot), or train a linear probe on
the projected source embeddings and test it on the held-out target domain.

**A note on the released code.** It computes the eigenvectors with `torch.linalg.eigh`, which returns
eigenvalues in *ascending* order, and keeps `eigvec[:, :K]`: the K **smallest** eigenvalues. With a
large λ those are the directions that move *most* under intervention, the opposite of the intent.
This dashboard uses the top K ("ICM") and offers the released slice as "ICM (as released)" so that you
can compare the two; the Causal playground shows, on a world where the truth is known, that the top-K
recovers the invariant subspace and the released slice a subspace orthogonal to it.

**Reading the views.** *Accuracy per domain*: CLIP in the full space vs the projection, zero-shot and
linear probe; the target domain is held out from everything that is fitted or chosen. *UMAP pair*: the
same images laid out from the full embedding and from the invariant one; if the projection works,
classes (colour by class) separate in the invariant space and domains (colour by domain) mix.
*Diagnostics*: the eigenvalue spectrum of M with the chosen K, the invariance ratio ‖ΔA‖/‖ZA‖ on
held-out pairs, and a K × λ sweep whose target map is shown only to illustrate the gap between honest
and peeking choices.
"""

PLAYGROUND_INTRO = """
A synthetic world where the truth is known. Each point has **invariant factors** (they decide the
class, the same way in every environment) and **variant factors** (style-like; in the training
environments they agree with the class most of the time, a shortcut). Both are mixed into an
"embedding" by one fixed, non-orthogonal linear map, like CLIP is assumed to do. At test time the
shortcut is broken: as the *shift* grows, the variant factors point to the wrong class.

Three predictors are trained on the training environments: one on the **full** embedding, one on
the **ICM** projection (top-K eigenvectors, fitted from true interventions that resample the variant
factors), and one on the **as-released** slice (the K smallest). Move the sliders and watch the
full-space predictor fall as the shift grows while the invariant one stays put.
"""

SWEEP_NOTE = """
Left: a **source-only score** of each setting, the one that chose K and λ on the Explorer (with
selection off: accuracy on the source domains' validation rows). Honest: this is how K and λ should
be chosen. Right: accuracy on the **held-out target** (peeking: for illustration only; choosing
from it would overstate how well the method generalises).
"""


def playground_angles(icm: float, released: float) -> str:
    """One sentence on subspace recovery from the largest principal angles (radians)."""
    if math.isnan(icm):
        return ""
    return (
        f"Largest principal angle to the true invariant subspace: **ICM {icm:.3g} rad** "
        f"(0 = recovered exactly), **as released {released:.3g} rad** (π/2 ≈ 1.571 = orthogonal to it)."
    )


def queue_place(ahead: int, cap: int) -> str:
    """What a session waiting at the server's gate (service.gate) sees."""
    place = "next in line" if ahead == 0 else f"{ahead} ahead of you"
    jobs = "one heavy job" if cap == 1 else f"{cap} heavy jobs"
    return (f"queued: {place}. This server runs {jobs} at a time (a selection grid, a model choice, a sweep, "
            "an embedding pass) so that each finishes sooner; this page goes on by itself.")
