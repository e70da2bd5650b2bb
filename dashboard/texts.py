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


# The icon of a status that waits for background work: Streamlit's bundled Material font, as the
# sidebar's icons (an emoji, "⏳", drew as an empty box where no emoji font is installed, and made
# Streamlit compile its emoji pattern, 0.3-0.4 s of a new process's first page).
PENDING_ICON = ":material/hourglass_top:"


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
same images laid out from the full embedding and from the invariant one. The projection removes what
the interventions change, not the style of a domain that no pair changes: on the bundled demo both maps
show an island per class and domain (of each image's 10 nearest neighbours, 96–100 % share its domain
in either space, for every target at the rule's K and λ), and what drops is the grouping by the colour
shortcut (90 % → 85–86 % share its colour) while the classes stay apart (99 %). The Story's sixth step
measures these shares live for the settings in the sidebar.
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


# ---------------------------------------------------------------- the Story page

STORY_TITLE = "The story: CLIP under a domain shift"
STORY_INTRO = ("Eight short steps, each computed live on the data and settings in the sidebar. The Explorer "
               "(left) has every control and table.")

# One entry per step, in order: (slug for ?step=, short title for the step indicator, heading).
STORY_STEPS = (
    ("world", "World", "1. The world, and how it shifts"),
    ("clip-map", "CLIP's map", "2. What CLIP sees: its map, by class and by the shortcut"),
    ("failure", "Failure", "3. What goes wrong on the held-out domain"),
    ("interventions", "Interventions", "4. Interventions: the same object, the shortcut changed"),
    ("projection", "Projection", "5. What the projection keeps and what it removes"),
    ("invariant-map", "Invariant map", "6. The map after the projection"),
    ("choice", "Choice", "7. Every target, and the model to deploy"),
    ("limits", "Limits", "8. Where it does not help, and why"),
)

MATHS = {
    "scm": r"""
\begin{aligned}
z_{\mathrm{inv}} &\sim p(z_{\mathrm{inv}}), \qquad y = g(z_{\mathrm{inv}}) \\
z_{\mathrm{var}} &\sim p_e(z_{\mathrm{var}} \mid y) \quad \text{(depends on the environment } e\text{: the shortcut)} \\
x &= f(z_{\mathrm{inv}}, z_{\mathrm{var}}), \qquad \mathrm{CLIP}(x) = W \begin{pmatrix} z_{\mathrm{inv}} \\ z_{\mathrm{var}} \end{pmatrix}
\quad (W \text{ linear, invertible})
\end{aligned}""",
    "shift": r"P_{\mathrm{source}}(z_{\mathrm{var}} \mid y) \neq P_{\mathrm{target}}(z_{\mathrm{var}} \mid y)"
             r"\quad\text{while}\quad P(y \mid z_{\mathrm{inv}}) \text{ stays the same}",
    "probe": r"\hat y = \arg\max_c \; w_c^\top \mathrm{CLIP}(x) \quad\text{(fitted on source rows only)}",
    "do": r"x_{\mathrm{do}} = f\big(z_{\mathrm{inv}},\; z_{\mathrm{var}}'\big), \qquad "
          r"\Delta = Z - Z_{\mathrm{do}} \;=\; W_{\mathrm{var}} (z_{\mathrm{var}} - z_{\mathrm{var}}')",
    "M": r"M = \frac{1}{n} Z^\top Z \;-\; \lambda \, \frac{1}{n} \Delta^\top \Delta",
    "eig": r"M v_i = \mu_i v_i, \quad \mu_1 \ge \mu_2 \ge \dots, \qquad A_{\mathrm{inv}} = [v_1, \dots, v_K]"
           r"\;\; \text{solves} \;\; \min_{A A^\top = I_K} \tfrac{1}{n}\lVert Z - Z A^\top A \rVert^2 + "
           r"\tfrac{\lambda}{n} \lVert \Delta A^\top \rVert^2",
    "ratio": r"\text{invariance ratio} = \frac{\lVert \Delta A_{\mathrm{inv}} \rVert_F}{\lVert Z A_{\mathrm{inv}} \rVert_F}"
             r"\quad\text{(held-out pairs; small = the kept directions ignore the interventions)}",
    "predict": r"\hat y = \arg\max_c \cos\!\big(A_{\mathrm{inv}}^\top \mathrm{CLIP}(x),\; A_{\mathrm{inv}}^\top t_c\big)"
               r"\quad\text{or a probe on } A_{\mathrm{inv}}^\top \mathrm{CLIP}(x)",
    "choice": r"\mathrm{score}(m) = \frac{1}{|S|} \sum_{d \in S} \min\big(\mathrm{acc}_{\mathrm{val}}(m, d),\; "
              r"\mathrm{acc}_{\mathrm{intervened}}(m, d),\; \mathrm{acc}_{\mathrm{held\,out}}(m, d)\big)",
    "limits": r"\text{zero-shot: } \hat y = \arg\max_c \cos(\mathrm{CLIP}(x), t_c) \text{ reads no source label: "
              r"nothing to learn, no shortcut to lose}",
}


def share(value: float) -> str:
    """A share as a whole percentage for a sentence (98 %, not 0.9812)."""
    return "n/a" if value != value else f"{value:.0%}"


# The playground's table: its columns as a reader names them (clip_icm.scm.run_playground's rows).
# The playground's predictor on the whole synthetic embedding: there is no CLIP in that world, so not
# the full space's usual label ("CLIP").
PLAYGROUND_FULL_SPACE = "Full embedding"

PLAYGROUND_COLUMNS = {
    "shift": "test-time shift",
    "predictor": "predictor",
    "id_accuracy": "accuracy, training environments",
    "ood_accuracy": "accuracy, shifted environment",
    "ood_gap": "drop under the shift",
    "max_angle": "largest angle to the true invariant subspace (rad)",
    "r2_inv": "R² of the invariant factors (want 1)",
    "r2_var": "R² of the variant factors (want 0)",
}


def queue_place(ahead: int, cap: int) -> str:
    """What a session waiting at the server's gate (service.gate) sees."""
    place = "next in line" if ahead == 0 else f"{ahead} ahead of you"
    jobs = "one heavy job" if cap == 1 else f"{cap} heavy jobs"
    return (f"queued: {place}. This server runs {jobs} at a time (a selection grid, a model choice, a sweep, "
            "an embedding pass) so that each finishes sooner; this page goes on by itself.")
