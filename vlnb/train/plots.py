"""Learning curves of a :class:`~vlnb.train.trainer.History`, static or redrawn live in a notebook."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt

from ..timing import timed


def plot_history(history, axes=None, ceiling: dict | None = None):
    """Three panels: training loss (per step, and the epoch mean), temperature ``exp(logit_scale)`` with
    the learning rate, and validation Recall@1/5 in both directions (when evaluated). Returns the figure.

    ``ceiling``: ``{"t2i_R@1": %, …}`` (:func:`vlnb.eval.ambiguity.retrieval_ceiling`), drawn as dashed lines
    in the metric's colour: the best recall any model can expect when captions are true of several images."""
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    else:
        fig = axes[0].figure
    steps, epochs = history.steps_df, history.epochs_df
    ax = axes[0]
    if len(steps):
        ax.plot(steps["step"], steps["loss"], lw=0.8, alpha=0.5, label="step")
    if len(epochs):
        ax.plot(epochs["step"], epochs["train_loss"], "o-", label="epoch mean")
    ax.set(xlabel="optimizer step", ylabel="contrastive loss", title="training loss")
    ax.legend(loc="upper right")
    ax = axes[1]
    if len(steps):
        ax.plot(steps["step"], steps["logit_scale"], color="C2", label="exp(logit_scale)")
        ax.set_ylabel("logit scale (1/temperature)")
        lr_ax = ax.twinx()
        lr_ax.plot(steps["step"], steps["lr"], color="C3", ls="--", label="lr")
        lr_ax.set_ylabel("learning rate")
        ax.legend(handles=ax.get_lines() + lr_ax.get_lines(), loc="center right")
    ax.set(xlabel="optimizer step", title="temperature and learning rate")
    ax = axes[2]
    metrics = [c for c in ("i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5") if c in epochs.columns]
    for c in metrics:
        d = epochs.dropna(subset=[c])
        (line,) = ax.plot(d["epoch"], d[c], "o-", label=c)
        if ceiling and c in ceiling:
            ax.axhline(ceiling[c], color=line.get_color(), ls="--", lw=1, label=f"{c} ceiling (ambiguous captions)")
    ax.set(xlabel="epoch", ylabel="recall (%)", title="validation retrieval")
    if metrics and ceiling:  # curves and their ceilings: the legend goes below the panel, not over the curves
        ax.set_ylim(0, 100)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=7, frameon=False)
    elif metrics:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def live_plots_drawn() -> bool:
    """Whether :func:`live_plot` draws: in an interactive session, not in a batch run (``vlnb run`` / ``vlnb book``
    set ``$VLNB_RUN_DIR``) unless ``VLNB_LIVE_PLOT=1``."""
    return os.environ.get("VLNB_LIVE_PLOT") == "1" or not os.environ.get("VLNB_RUN_DIR")


def live_plot(force: bool | None = None):
    """An ``on_epoch_end`` callback that (re)draws :func:`plot_history` in place in a Jupyter output.

    In a batch run (``vlnb run`` / ``vlnb book``: ``$VLNB_RUN_DIR`` set) nobody watches the redraws and the
    executed notebook keeps only the last one, which the chapter draws after training anyway, so the callback
    draws nothing there (it cost a figure render per epoch); ``force=True`` or ``VLNB_LIVE_PLOT=1`` draws anyway."""
    # lazy: IPython is slow to import; only a live plot in a notebook needs it (and looks display up then)
    from IPython.display import display

    if force is None:
        force = live_plots_drawn()
    if not force:
        def nothing(history) -> None:
            return None

        nothing.replace_with = lambda fig: None  # nothing was drawn: the chapter's final figure shows as usual
        return nothing
    handle = None

    def callback(history):
        nonlocal handle
        with timed("plotting"):
            fig = plot_history(history)
            if handle is None:
                handle = display(fig, display_id=True)
            else:
                handle.update(fig)
            plt.close(fig)

    def replace_with(fig) -> None:
        """Show ``fig`` (the final curves) in the live plot's place instead of below it: the page then holds
        one curves figure per run, not the last live frame and the final figure."""
        if handle is not None:
            handle.update(fig)
            plt.close(fig)

    callback.replace_with = replace_with
    return callback
