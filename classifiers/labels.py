"""Training targets for the default model: how hard a prompt is, estimated from every model measured on it.

One weak/strong pair's win or loss on a prompt is a noisy label (one coin flip per model). Most rows
of the shared data carry the outcomes of 9 to 40 models (``meta.model_scores``); an item's difficulty
estimated from all of them is far less noisy. Two estimates:

- ``mean_failure``: 1 - the mean score over the models that saw the item;
- ``irt_difficulty``: a one-parameter IRT (Rasch) fit per source, P(model m solves item i) =
  sigmoid(ability_m - difficulty_i), so an item seen by fewer or weaker models is not counted as
  harder, and items everyone solves or everyone fails spread out on the logit scale. Maximum a
  posteriori with a normal prior on difficulties, so those items get finite values.

Scores in [0, 1] that are not 0/1 (token F1, concept coverage) enter as fractional successes.

Model sets and their strength differ between sources (MMLU-Pro's include 7B base models, MATH's
o1), so a difficulty is only comparable within its source: ``within_source_z`` standardises each
source's values before sources are pooled.
"""

from __future__ import annotations

import numpy as np

# Prior sd of item difficulties (logits). Wide enough not to flatten real differences, narrow
# enough that an item solved by all 29 models does not run off to infinity.
PRIOR_SD = 2.0
ITERATIONS = 30


def mean_failure(Y: np.ndarray) -> np.ndarray:
    """1 - mean score over the models measured on each item (``Y``: items x models, NaN = not measured)."""
    return 1.0 - np.nanmean(Y, axis=1)


def irt_difficulty(Y: np.ndarray) -> np.ndarray:
    """Rasch item difficulties (logits) of items measured by one set of models. Deterministic.

    Joint MAP by alternating one Newton step per item difficulty and per model ability; abilities
    are re-centred each round (the scale's origin is arbitrary).
    """
    seen = ~np.isnan(Y)
    Y = np.where(seen, Y, 0.0)
    b = np.zeros(Y.shape[0])
    theta = np.zeros(Y.shape[1])
    for _ in range(ITERATIONS):
        p = 1.0 / (1.0 + np.exp(-(theta[None, :] - b[:, None])))
        w = np.where(seen, p * (1.0 - p), 0.0)
        # d loglik / d b_i = sum_m (p - y); prior adds -b / sd^2
        grad_b = np.where(seen, p - Y, 0.0).sum(axis=1) - b / PRIOR_SD**2
        b += grad_b / (w.sum(axis=1) + 1.0 / PRIOR_SD**2)
        p = 1.0 / (1.0 + np.exp(-(theta[None, :] - b[:, None])))
        w = np.where(seen, p * (1.0 - p), 0.0)
        grad_t = np.where(seen, Y - p, 0.0).sum(axis=0)
        theta += grad_t / (w.sum(axis=0) + 1e-9)
        theta -= theta.mean()
    return b


def pair_failure(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """1 - the mean of the weak and the strong model's score: difficulty from the routed pair only."""
    return 1.0 - (np.asarray(weak, float) + np.asarray(strong, float)) / 2.0


def within_source_z(values: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """``values`` standardised within each source (mean 0, sd 1; a constant source maps to 0)."""
    out = np.zeros(len(values))
    for source in np.unique(sources):
        m = sources == source
        sd = float(values[m].std())
        out[m] = (values[m] - values[m].mean()) / sd if sd > 0 else 0.0
    return out


def difficulty(Y: np.ndarray, collections: np.ndarray, kind: str) -> np.ndarray:
    """Within-collection z-scored difficulty of each row: ``kind`` is ``irt`` or ``mean_failure``.

    ``Y`` is rows x models (NaN = not measured). Each collection (a file's model set) is fitted on its
    own rows and on the models measured on them.
    """
    raw = np.zeros(len(Y))
    for c in np.unique(collections):
        rows = collections == c
        sub = Y[rows]
        sub = sub[:, ~np.isnan(sub).all(axis=0)]
        raw[rows] = irt_difficulty(sub) if kind == "irt" else mean_failure(sub)
    return within_source_z(raw, collections)
