"""Learning curves of a :class:`~vlnb.train.trainer.History`, static or redrawn live in a notebook."""

from __future__ import annotations


def plot_history(history, axes=None):
    """Three panels: training loss (per step, and the epoch mean), temperature ``exp(logit_scale)`` with
    the learning rate, and validation Recall@1/5 in both directions (when evaluated). Returns the figure."""
    import matplotlib.pyplot as plt

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
        ax.plot(d["epoch"], d[c], "o-", label=c)
    ax.set(xlabel="epoch", ylabel="recall (%)", title="validation retrieval")
    if metrics:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def live_plot():
    """An ``on_epoch_end`` callback that (re)draws :func:`plot_history` in place in a Jupyter output."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    handle = None

    def callback(history):
        from ..timing import timed

        nonlocal handle
        with timed("plotting"):
            fig = plot_history(history)
            if handle is None:
                handle = display(fig, display_id=True)
            else:
                handle.update(fig)
            plt.close(fig)

    return callback
