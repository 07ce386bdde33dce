"""Fit diagnosis of one training from its history: ok, overfitting, underfitting or too short, with the numbers.

The heuristics read ``loss``, ``val_loss`` and the ``loss_phase`` of each epoch (a loss change such as LDAM's DRW
starts a new phase, judged on its own); the report (:mod:`medstack.report`) lists the verdicts per strategy and fold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

MIN_EPOCHS = 3  # fewer epochs in the last loss phase: too short to judge
OVERFIT_RISE = 0.10  # final val loss this share above its minimum ...
OVERFIT_MIN_DELTA = 0.02  # ... and at least this much in absolute terms
UNDERFIT_FLAT = 0.90  # final train loss above this share of its first value
UNDERFIT_VAL_GAIN = 0.05  # val loss never fell by this share of its first value

History = Mapping[str, list[float]]


def diagnose_fit(history: History, kept: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """Heuristic verdict on one training: ``(verdict, reason with the numbers)``.

    ``kept`` is the fold's info (``best_epoch``, 0-based, and ``recipe.monitor``): when given, an overfitting
    verdict names the epoch whose weights early stopping really kept, which is the monitor's best (val ROC AUC by
    default) and need not be the val-loss minimum the verdict is judged on.

    Only the epochs of the last ``loss_phase`` are compared (LDAM-DRW switches loss mid-training, so losses before
    and after the switch are on different scales; early stopping also acts on that phase only). Epochs with a
    non-finite loss are dropped and counted in the reason. Rules, in order:

    - ``too_short``: fewer than 3 epochs in that phase, or no ``val_loss`` recorded.
    - ``overfitting``: val loss ends more than 10% *and* more than 0.02 above its minimum, and train loss at the end
      is below its value at that minimum epoch (it kept falling while val loss rose).
    - ``underfitting``: final train loss above 90% of its first value in the phase *and* val loss never fell by 5%
      of its first value (both flat). If earlier phases exist and the first one did reduce train loss by more than
      10%, the flat last phase is fine-tuning of a model that already learned: ``ok``.
    - ``ok`` otherwise (the reason still says when val loss rose while train loss rose too: unstable, not overfit).

    These are heuristics on loss curves, not tests; the report says so.
    """
    loss, val_loss = list(history.get("loss", [])), list(history.get("val_loss", []))
    phase = list(history.get("loss_phase") or [0] * len(loss))
    if not val_loss:
        return "too_short", "no validation loss recorded: cannot judge the fit"
    n = min(len(loss), len(val_loss), len(phase))
    in_last = [i for i in range(n) if phase[i] == phase[n - 1]] if n else []
    keep = [i for i in in_last if math.isfinite(loss[i]) and math.isfinite(val_loss[i])]
    dropped = len(in_last) - len(keep)
    note = f" ({dropped} epoch(s) with non-finite loss ignored)" if dropped else ""
    if len(keep) < MIN_EPOCHS:
        return "too_short", f"{len(keep)} epoch(s) in the last loss phase: fewer than {MIN_EPOCHS}, too few to judge{note}"
    train = [loss[i] for i in keep]
    val = [val_loss[i] for i in keep]
    best = int(np.argmin(val))
    best_epoch, last_epoch = keep[best] + 1, keep[-1] + 1  # 1-based epochs of the whole training
    rise = val[-1] - val[best]
    rose_clearly = rise > OVERFIT_RISE * abs(val[best]) and rise > OVERFIT_MIN_DELTA
    if rose_clearly and train[-1] < train[best]:
        return "overfitting", (
            f"val loss rose from {val[best]:.3f} (epoch {best_epoch}) to {val[-1]:.3f} (epoch {last_epoch}, "
            f"+{rise / abs(val[best]):.0%}) while train loss fell from {train[best]:.3f} to {train[-1]:.3f}"
            f"{_kept_weights(kept)}{note}"
        )
    flat_train = train[-1] > UNDERFIT_FLAT * train[0]
    val_gain = val[0] - min(val)
    if flat_train and val_gain < UNDERFIT_VAL_GAIN * abs(val[0]):
        earlier = _first_phase_drop(history, loss, phase, n)
        flat = f"train loss {train[0]:.3f} -> {train[-1]:.3f}, val loss {val[0]:.3f} -> best {min(val):.3f}"
        if earlier is not None and earlier[1] < UNDERFIT_FLAT * earlier[0]:
            return "ok", (
                f"last loss phase flat ({flat}) but train loss already fell {earlier[0]:.3f} -> {earlier[1]:.3f} "
                f"in the first phase: fine-tuning after the loss switch{note}"
            )
        return "underfitting", f"both flat: {flat} (val loss fell by under {UNDERFIT_VAL_GAIN:.0%}){note}"
    reason = f"best val loss {val[best]:.3f} at epoch {best_epoch} of {last_epoch}"
    if rose_clearly:
        reason += (
            f"; val loss then rose to {val[-1]:.3f} but train loss did not fall ({train[best]:.3f} -> {train[-1]:.3f}): "
            "unstable training rather than overfitting"
        )
    return "ok", reason + note


def _first_phase_drop(history: History, loss: list[float], phase: list, n: int) -> tuple[float, float] | None:
    """(first, last) finite train loss of the first loss phase when a later phase exists, else None."""
    if not history.get("loss_phase") or phase[0] == phase[n - 1]:
        return None
    first = [loss[i] for i in range(n) if phase[i] == phase[0] and math.isfinite(loss[i])]
    return (first[0], first[-1]) if len(first) >= 2 else None


def _kept_weights(kept: Mapping[str, Any] | None) -> str:
    """'; early stopping kept the epoch-N weights (best MONITOR)' from a fold's info, or '' when it is unknown."""
    if not kept or kept.get("best_epoch") is None:
        return ""
    monitor = (kept.get("recipe") or {}).get("monitor")
    return f"; early stopping kept the epoch-{int(kept['best_epoch']) + 1} weights" + (f" (best {monitor})" if monitor else "")


def diagnose_all(
    histories: Mapping[str, Mapping[int, History]], fold_info: Mapping[str, Mapping[int, Mapping]] | None = None,
) -> dict[str, dict[int, tuple[str, str]]]:
    """:func:`diagnose_fit` for every strategy and fold, folds in order, each with its fold info when given."""
    info = fold_info or {}
    return {s: {fold: diagnose_fit(h, info.get(s, {}).get(fold)) for fold, h in sorted(per.items())}
            for s, per in histories.items()}
