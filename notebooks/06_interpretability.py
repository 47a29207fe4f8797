# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. Interpretability: where do the maps point?
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/vlnb-book/vlnb/blob/main/notebooks/06_interpretability.ipynb)
#
# An attention heatmap is easy to draw and easy to draw wrong. The weights have to come from the
# computation that produced the model's score (PyTorch's fused SDPA kernels do not even return them);
# the row of patch tokens has to be folded back with the model's *own* patch grid (a 384-pixel ViLT input
# is a 12×12 grid, a 224-pixel CLIP ViT-B/32 input 7×7, BLIP-2's ViT-g 16×16) and in the right token
# order; and a map that *looks* right says nothing until it is checked against where the object is.
#
# This chapter does the three things in turn. It records attention while each model's own encoding code
# runs, with eager attention and the token count asserted against the grid; it computes the usual
# explanations — last-layer CLS attention, attention rollout {cite}`abnar2020quantifying`, the
# gradient-weighted relevancy of Chefer et al. {cite}`chefer2021generic`, BLIP-2's Q-Former
# cross-attention {cite}`li2023blip2` and Grad-CAM {cite}`selvaraju2017gradcam` for the CNN towers;
# and it *measures* them with object masks: how much of each map's energy falls on the object a text
# names, compared with another object of the same image — the pointing game {cite}`zhang2018topdown` in
# its energy form {cite}`wang2020scorecam`.

# %%
# In Colab, install vlnb first (locally it is already installed with `pip install -e .`).
import sys

if "google.colab" in sys.modules:
    from IPython import get_ipython

    get_ipython().run_line_magic("pip", 'install -q "vlnb[all] @ git+https://github.com/vlnb-book/vlnb"')

# %%
import time

import pandas as pd
import torch

from vlnb.config import NotebookRun
from vlnb.interpret import METHODS
from vlnb.interpret import plots as iplots
from vlnb.interpret.pointing import summarise
from vlnb.interpret.study import (
    entropy_headline,
    entropy_summary,
    headlines,
    load_pairs,
    pick_device,
    run_pointing,
)
from vlnb.zoo import profile_models

run = NotebookRun.start("06_interpretability", globals())

# %% [markdown]
# ## Parameters
#
# `None` means *the profile's default*. Offline, the models are the book's reference models
# (`scratch-world`: the from-scratch ViT trained on the offline world in {doc}`chapter 2 <02_clip_training>`; `towers-coco`: the
# frozen EfficientNet-Lite0 + MiniLM towers with heads trained on coco-mini); in the full profile they
# are the hub checkpoints of `vlnb.zoo.HUB_MODELS` (`models` swaps any of them).

# %% tags=["parameters"]
profile = "offline"           # "offline": CPU reference models | "full": hub checkpoints on a GPU
out_dir = "."                 # run folder for tables and figures
seed = 0
models = None                 # offline: reference model names | full: display name -> hub id or folder
n_images = None               # images per data set in the pointing game (up to 2 pairs each)
methods = None                # subset of the methods below (None: all a model supports)
datasets = None               # data sets for hub models: world and/or coco
coco_root = None              # COCO folder (None: the shared coco-mini val2017)
coco_split = None             # COCO split folder
min_area = None               # COCO objects must cover at least this share of the image
n_overlays = None             # examples per data set in the overlay figures
overlay_methods = None        # methods shown in the overlays (None: all)
n_entropy = None              # images per model for the attention entropies
upsample = None               # grid to pixels: bilinear, nearest or bicubic
tolerance = None              # pointing-game tolerance in pixels
chefer_start_layer = None     # first layer of Chefer's rule (0: all)
n_bootstrap = None            # bootstrap resamples over images
batch_size = None
device = None                 # auto: cuda when available
progress = None

# %%
cfg = run.params(globals())
t_start = time.perf_counter()
torch.manual_seed(cfg.seed)
device = pick_device(cfg.device)
run.params_table()

# %% [markdown]
# ## Models, data and their patch grids
#
# Attention maps need the attention *weights*. The book loads hub models with
# `load_model(..., attn_implementation="eager")` here (the SDPA path returns none, and the tracer refuses
# such a model with an error that says so); the from-scratch ViT computes the same softmax explicitly when
# its `Attention.keep_weights` flag is on. The pairs come from two sources with exact masks:
#
# - **world**: test scenes of the offline world with two objects whose colour and shape are unique in
#   the image; the text is the world grammar's noun phrase, e.g. *"a red circle"*, and each image is used
#   in both directions (A named, B the distractor, and the other way round);
# - **coco**: real COCO images (offline coco-mini's val2017, in the full profile the `coco_split` folder of
#   `coco_root`) with pycocotools masks (all instances of a category); the text is a human caption that
#   names the target category and not the distractor's. ViLT keeps each photo's aspect ratio, so its
#   pairs are explained in batches of one input size (one patch grid per batch).

# %%
if cfg.profile == "offline":
    models = profile_models("offline", models=cfg.models or None, device=device, progress=cfg.progress)
else:
    models = profile_models("full", models=cfg.models, device=device, progress=cfg.progress,
                            attn_implementation="eager")
pairs = load_pairs(cfg.datasets, cfg.n_images, coco_root=cfg.coco_root, coco_split=cfg.coco_split,
                   min_area=cfg.min_area)
pd.DataFrame([{"dataset": d, "pairs": len(p), "images": len({x.image_id for x in p})} for d, p in pairs.items()])

# %%
result = run_pointing(models, pairs, methods=cfg.methods, batch_size=cfg.batch_size, upsample=cfg.upsample,
                      tolerance=cfg.tolerance, start_layer=cfg.chefer_start_layer, keep=cfg.n_overlays,
                      n_entropy=cfg.n_entropy, progress=cfg.progress)
grids = result["grids"]
run.save_table(grids, "patch_grids")
grids

# %% [markdown]
# Each row above was read from a forward pass, not from a config: the number of tokens the attention
# actually had, which the tracer checked equals the special tokens plus `gh × gw` for the input's own
# grid, `(H / patch) × (W / patch)`. For ViLT the special tokens are the text tokens and one image
# `[CLS]`, and there is a second trap: HF's ViLT draws a random *permutation* of the image tokens on every
# call (its pre-training patch sampling, still active when every patch is kept), so the tracer records
# the permutation of that call and puts each token back on its cell. For the CNN towers the "grid" is
# the last feature map (stride 32: 7×7 at 224 pixels).
#
# ## The methods
#
# For a transformer with layers $l = 1..L$ and head-wise attention $A^{(l)}_h$ (rows: queries, summing to 1):
#
# - **CLS attention**: the readout token's row of the last layer, mean over heads,
#   $\bar A^{(L)}_{\text{cls}, \cdot}$. The readout is the token the score is computed from: CLS for CLIP,
#   BLIP and the scratch ViT, the text `[CLS]` of ViLT's joint sequence. (BLIP-2's contrastive score is
#   read from the Q-Former's queries, not from its ViT's CLS; for BLIP-2 the CLS and rollout maps show the
#   ViT's own CLS, the Q-Former methods below what the score reads.)
# - **Rollout** {cite}`abnar2020quantifying`: residual connections pass half of each token's signal
#   through unchanged, so each layer is $\hat A^{(l)} = \operatorname{rownorm}(\operatorname{fuse}_h A^{(l)}_h + I)$
#   (exactly $\tfrac12 A + \tfrac12 I$ for the mean) and $R = \hat A^{(L)} \cdots \hat A^{(1)}$; we fuse heads by mean and by max.
# - **Chefer et al.** {cite}`chefer2021generic`: with $s$ the image–text score (the cosine similarity of a
#   dual encoder's embeddings with the text's, ViLT's rank logit),
#   $\bar A^{(l)} = \mathbb E_h\big[(\nabla_{A_h} s \odot A_h)^+\big]$ and $R \leftarrow R + \bar A^{(l)} R$ from $R = I$.
#   It is the only attention method here whose map depends on the text for a dual encoder. For BLIP-2
#   their bi-modal rules carry the relevance through the Q-Former: self-attention
#   $R^{qq} \mathrel{+}= \bar A R^{qq}$, $R^{qi} \mathrel{+}= \bar A R^{qi}$, cross-attention
#   $R^{qi} \mathrel{+}= (\bar R^{qq})^\top \bar A\, \bar R^{ii}$, read at the query whose embedding is most
#   similar to the text (the one the ITC max picks).
# - **Q-Former cross-attention** (BLIP-2): the 32 queries' attention over the ViT's image tokens, mean over
#   cross-attention layers and heads, at the text's best query.
# - **Grad-CAM** {cite}`selvaraju2017gradcam` (CNN towers): $\alpha_c = \operatorname{mean}_{xy} \partial s / \partial F_c$,
#   map $= \operatorname{ReLU}(\sum_c \alpha_c F_c)$ on the last conv stage $F$.
#
# Every map is clamped at zero, divided by its maximum (so it lies in $[0, 1]$ and energy shares are
# unchanged) and upsampled bilinearly from the grid to the model's input; masks are moved into the same
# frame with the model's own resize and crop.

# %%
pd.DataFrame([{"method": k, "what": v} for k, v in METHODS.items()])

# %% [markdown]
# ## Maps side by side
#
# Each row is one pair: the image as the model sees it, with the named object outlined in green and
# the distractor dashed in white; then each model's maps, titled with the share of the map's energy
# $E$ that falls inside the named object's mask.

# %%
for dataset, by_model in result["examples"].items():
    if any(by_model.values()):
        fig = iplots.overlay_figure(by_model, n=cfg.n_overlays, methods=cfg.overlay_methods,
                                    title=f"{dataset}: maps for the named object")
        run.savefig(fig, f"overlays_{dataset}")

# %% [markdown]
# ## Attention entropy
#
# How spread out is attention? For a row $a$ over $n$ keys, $H(a) = -\sum_j a_j \log a_j$ ranges from 0
# (one key) to $\log n$ (uniform). Raw entropies cannot be compared across models with different token
# counts — a 50-token CLIP ViT-B/32 row has at most $\log 50 = 3.9$ nats, a 257-token BLIP-2 row
# $\log 257 = 5.5$ — so the table lists the maximum next to each value, and the plot shows
# $H / \log n$. Rows "all" average every query token; "readout" is the token the score is read from.

# %%
ent = entropy_summary(result["entropy"])
run.save_table(result["entropy"], "attention_entropy_heads")
run.save_table(ent, "attention_entropy")
run.glue("entropy_readout", entropy_headline(result["entropy"]))
if not result["entropy"].empty:
    run.savefig(iplots.entropy_figure(result["entropy"], rows="all"), "entropy_all_rows")
    run.savefig(iplots.entropy_figure(result["entropy"], rows="readout"), "entropy_readout_row")
ent.round(3)

# %% [markdown]
# The readout row's normalised entropy, first and last layer: {glue:text}`entropy_readout`.
# An entropy near 1 means the readout attends almost uniformly; such a map can still look structured
# after normalisation to its maximum, which is one more reason to measure maps rather than look at them.
#
# ## The pointing game
#
# For a map $m$ and a mask $M$, the **energy share** is $E = \sum_{p \in M} m_p / \sum_p m_p$; a map
# that is uniform gets exactly the mask's area share $|M| / |\text{image}|$, the baseline. The classic
# **hit** asks whether the map's maximum lies in the mask. Each pair gives both numbers for the named
# object (target) and the distractor; the **excess** $(E_t - E_d) - (A_t - A_d)$ is what the map gives
# the named object beyond what object sizes alone give a uniform map. Intervals are 95% bootstrap
# intervals over images (an image's two pairs are resampled together).

# %%
records = result["records"]
summary = summarise(records, n_boot=cfg.n_bootstrap, seed=cfg.seed)
run.save_table(records, "pointing_pairs")
run.save_table(summary, "pointing_game")
cols = ["model", "dataset", "method", "n_pairs", "n_images", "energy_target", "energy_target_lo", "energy_target_hi",
        "energy_distractor", "area_target", "area_distractor", "excess", "excess_lo", "excess_hi", "target_wins",
        "hit_target", "hit_distractor"]
summary[[c for c in cols if c in summary]].round(3)

# %%
run.savefig(iplots.pointing_figure(summary), "pointing_game")
h = headlines(summary, families={name: m.family for name, m in models.items()})
run.glue("pointing_best", h["best"])
run.glue("agnostic_gap", h["agnostic_gap"])
print(h["per_row"].replace("; ", "\n"))

# %% [markdown]
# The largest excess over the uniform baseline in this run: {glue:text}`pointing_best`.
#
# Two things to read off the table. On the world every image is used in both directions, so a map that
# does not depend on the text — CLS attention and rollout of a dual encoder — gives the target and the
# distractor the same energy on average: the largest such gap in this run is {glue:text}`agnostic_gap`
# (zero up to floating-point noise). Such maps can point at *objects* (compare their energy with the
# area baseline), but never at *the object the caption names*; only a text-conditioned method can:
# Chefer's relevancy and Grad-CAM of the image–text similarity, BLIP-2's Q-Former maps through the choice
# of query, and every map of ViLT, whose attention sees the text. On COCO the two objects of a pair
# differ in size (the area columns), which is why the excess matters: an energy share is only as good as
# what it adds to the area it covers.
#
# ## Caveats
#
# - The offline ViT is small (64-pixel scenes, an 8×8 grid) and trained for minutes; its maps show what
#   *this* model uses, not what CLIP-scale models do. The full profile runs the same code on the hub
#   checkpoints.
# - Attention is not explanation by default {cite}`jain2019attention`: attention weights say where
#   information is read from in one layer, not what the score depends on. Rollout assumes heads and
#   layers mix linearly; Chefer's relevancy weights attention by its gradient and is still a heuristic.
#   The pointing game checks *localisation*, not faithfulness.
# - The COCO texts name categories by a small word list (`vlnb.interpret.pointing.COCO_WORDS`), so a
#   few pairs may be mis-assigned (e.g. a "bike" that is a motorcycle).

# %%
timing = result["timing"]
run.save_table(timing, "timing")
run.glue("runtime_s", f"{time.perf_counter() - t_start:.0f}")
timing.round(2)

# %% [markdown]
# This chapter's computations took {glue:text}`runtime_s` seconds after the parameters cell.

# %% [markdown]
# ## Exercises
#
# Each exercise runs on a CPU in a few minutes and writes its own run folder. Write your prediction down
# first, then compare the new run's `results/` tables with this page's (linked below).
#
# 1. **A tolerance for the pointing game.** Predict how the hit rates change when the map's maximum may miss the mask by 4 pixels.
#
#    ```bash
#    vlnb run notebooks/06_interpretability.ipynb -p tolerance 4 -p n_images 40 --out runs/ex6-tol4
#    ```
#
#    *What to look at:* `hit_target` and `hit_distractor` in `results/pointing_game.csv`: both rise; does their difference?
#
# 2. **Nearest-neighbour upsampling.** Predict whether the energy shares depend on how the 8×8 grid is upsampled.
#
#    ```bash
#    vlnb run notebooks/06_interpretability.ipynb -p upsample nearest -p n_images 40 --out runs/ex6-nearest
#    ```
#
#    *What to look at:* `energy_target` and `excess` in `results/pointing_game.csv` against this page's (bilinear).
#
# ## This run's tables and figures
#
# Every table and figure this run wrote, as files (CSV, PNG):

# %%
run.downloads()
