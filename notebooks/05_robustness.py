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
# # 5. Robustness to image corruptions
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/vlnb-book/vlnb/blob/main/notebooks/05_robustness.ipynb)
#
# A model that retrieves the right caption for a clean photo may not do so for the same photo with
# sensor noise, a little blur, JPEG artefacts or a hand in front of the object. This chapter measures
# how zero-shot accuracy and retrieval Recall@K fall as images are corrupted, the way ImageNet-C
# {cite}`hendrycks2019benchmarking` does for classifiers: fixed corruption families, five severities each,
# every model on the same corrupted images, and a summary normalised by a baseline model.
#
# An earlier study of CLIP, BLIP and ViLT added noise, blur and occlusion to one image at a time and
# reported flat rows for ViLT that turned out to be an evaluation bug. Three rules here prevent both
# problems: corruptions act on **batches** of pixels on the model's own device; they act on the
# **`[0, 1]` pixels before each model's normalisation** (a noise of standard deviation 0.1 means the same
# thing for every model, whatever its mean/std); and every number comes out of the same evaluation code
# as the clean results, so a model whose curve is flat really is insensitive, not unevaluated.

# %%
# In Colab, install vlnb first (locally it is already installed with `pip install -e .`).
import sys

if "google.colab" in sys.modules:
    from IPython import get_ipython

    get_ipython().run_line_magic("pip", 'install -q "vlnb[all] @ git+https://github.com/vlnb-book/vlnb"')

# %%
import pandas as pd
from IPython.display import Markdown

from vlnb.config import NotebookRun
from vlnb.robustness import intervals as rintervals
from vlnb.robustness import perturbations as P
from vlnb.robustness import plots as rplots
from vlnb.robustness import report, sweep

run = NotebookRun.start("05_robustness", globals())

# %% [markdown]
# ## Parameters
#
# `None` means *the profile's default* (see `vlnb/params/05_robustness.py`). `corruptions`,
# `severities`, `models` and `datasets` select the part of the sweep this run computes, so a large sweep
# is several ordinary runs (next section); `occlusion` says where the occluding square of the
# `occlusion` family goes (`random`, `centre`, or `object`: on the largest object, using the data set's
# masks).

# %% tags=["parameters"]
profile = "offline"          # "offline": reference models, CPU | "full": hub models on COCO/Flickr30k
out_dir = "."                # run folder for tables and figures
seed = 0                     # seeds the random corruptions (per image)
models = None                # offline: reference model names | full: display name -> hub id or folder
datasets = None              # a list (every model on each) or a mapping model -> list of data sets
corruptions = None           # corruption families, e.g. ["shot_noise", "defocus_blur", "occlusion"]
severities = None            # severities 1..5 (the clean images are always evaluated)
occlusion = None             # where the occlusion square goes: random, centre or object
occlusion_fill = None        # grey level of the occluding square
n_images = None              # images per data set: an int or a mapping data set -> int
cross_max_images = None      # the re-rank subset: ITM heads / cross encoders score pairs of at most this many images
rerank_k = None              # chapter 4's re-rank depth: ITC top-k re-scored by ITM (0: no re-ranking)
first_stage = None           # the dual encoder whose ITC top-k a cross encoder (ViLT-like) re-ranks; the reference
coco_templates = None        # zero-shot prompts on photos: chapter 4's template set (e.g. openai_imagenet_7)
n_boot = None                # bootstrap draws (images redrawn) of every interval
baseline = None              # model whose errors normalise the mCE (None: the first model)
reference_size = None        # blur sizes are ImageNet-C's at this image side, scaled to the input
ks = None                    # Recall@K cut-offs
batch_size = None
workers = None               # models evaluated side by side on a CPU (None: one per torch thread; GPU: 1)
device = None                # cpu, cuda or auto
coco_root = None             # full profile: COCO 2017 folder
coco_karpathy_split = None   # full profile: Karpathy's dataset_coco.json
flickr30k_source = None      # full profile: hub id or local copy of Flickr30k
cache_dir = None             # feature cache folder (None: vlnb's cache)

# %%
cfg = run.params(globals())
CORRUPTIONS = cfg.resolved_corruptions()
run.glue("n_boot", str(cfg.n_boot))
run.params_table()

# %% [markdown]
# ### A sweep is a set of papermill runs
#
# Every run writes one tidy table, `results/robustness_results.csv`, and the feature cache keys each
# cell by the model's weights, the images, the preprocessing **and the exact corruption** (family,
# severity, constants, seed). A large sweep can therefore be split along any axis and run in pieces:
# in parallel, on a Dask cluster or on different days. `sweeps/robustness.yaml` splits the corruption
# families into four groups, one run each (every combination of `grid` is one run):
#
# ```yaml
# grid:
#   corruptions:
#     - [gaussian_noise, shot_noise, impulse_noise]
#     - [defocus_blur, motion_blur, gaussian_blur]
#     - [brightness, contrast, saturate]
#     - [jpeg_compression, pixelate, occlusion]
# ```
#
# ```bash
# vlnb sweep notebooks/05_robustness.ipynb --grid sweeps/robustness.yaml --profile full --out runs/rob-sweep
# vlnb sweep notebooks/05_robustness.ipynb --grid sweeps/robustness.yaml --profile full --out runs/rob-sweep \
#     --scheduler tcp://HOST:8786            # the same runs as tasks of a Dask cluster
# vlnb collect runs/rob-sweep               # -> runs/rob-sweep/collected/robustness_results.csv
# ```
#
# Every combination is validated against this chapter's parameters before anything runs; each run
# gets its own folder; running the same command again resumes the sweep (finished runs are skipped);
# a failed run is recorded with its error while the others go on. `vlnb collect` joins the runs'
# tables with the parameters as columns. The clean images (severity 0) are measured in every run, so
# keep one row per cell before summarising:
#
# ```python
# from vlnb.robustness.sweep import summarize
# from vlnb.sweep import collect
#
# results = collect("runs/rob-sweep", table="robustness_results")  # + run and parameter columns
# results = results.drop_duplicates(["model", "dataset", "task", "metric", "corruption", "severity"])
# summary = summarize(results)
# ```
#
# A rerun of a cell that was already computed reads its embeddings back from the cache.

# %% [markdown]
# ## The corruptions
#
# All corruptions take a batch $x \in [0,1]^{B\times 3\times H\times W}$ — the model's resized and
# cropped pixels, *before* its normalisation — and return one of the same shape, dtype and device, clipped
# to $[0, 1]$. The ImageNet-C families use ImageNet-C's constants for severities $s = 1\dots5$ (severity
# 0 is the identity), e.g.
#
# - Gaussian noise $x + \sigma_s\,\varepsilon$, $\varepsilon \sim \mathcal N(0, 1)$, $\sigma_s \in \{.08, .12, .18, .26, .38\}$;
#   shot noise $\mathrm{Poisson}(\lambda_s x)/\lambda_s$ with $\lambda_s \in \{60, 25, 12, 5, 3\}$ photons per unit intensity;
# - defocus blur: convolution with an anti-aliased disk of radius $r_s \in \{3, 4, 6, 8, 10\}$ px; motion
#   blur: a one-sided Gaussian average of copies shifted along a random direction;
# - brightness: $+\{.1,\dots,.5\}$ on the HSV value; contrast: $(x - \bar x)c_s + \bar x$ with
#   $c_s \in \{.4, .3, .2, .1, .05\}$; JPEG at quality $\{25, 18, 15, 10, 7\}$; pixelate: box-downsample by
#   $\{.6, .5, .4, .3, .25\}$ and upsample back.
#
# Spatial constants are pixels of a 224 px image; for another input side they scale with it (a 64 px
# image gets the same blur *relative to its size*). Occlusion, in the spirit of
# {cite}`zeiler2014visualizing`, pastes a grey square whose side is $\{.1, .2, .3, .4, .5\}$ of the image
# side: at a random place, in the centre, or centred on the largest object (the pixel of its mask nearest
# the mask's centroid, mapped through the model's own resize and crop).
#
# **Determinism.** Random corruptions draw from a `torch.Generator` per image, seeded from the run seed,
# the family and the image id: an image gets the same noise in any batch, at any batch size, in any
# rerun on the same kind of device. Severities of one family share the draws (common random numbers),
# so the curves below are smoother than independent noise would make them. The implementation is
# checked against the `imagecorruptions` package {cite}`michaelis2019benchmarking` in the tests (within
# one grey level; JPEG within about one level on average).

# %%
constants = pd.DataFrame(
    [{"corruption": c, **{f"s{k + 1}": str(v) for k, v in enumerate(P.SEVERITY_CONSTANTS[c])}} for c in CORRUPTIONS]
)
run.save_table(constants, "severity_constants")
constants

# %% [markdown]
# ## Models and data
#
# Offline, the models are the reference models of {doc}`chapter 2 <02_clip_training>`, evaluated the way
# {doc}`chapter 4 <04_compare>` evaluates them:
#
# - the from-scratch CLIP (**scratch-world**, 64 px images) on the world's test split — zero-shot over shapes
#   and colours, and retrieval over all five captions per image — and the frozen pretrained towers with
#   trained linear heads (**towers-coco**) on the real COCO val2017 subset — retrieval and zero-shot
#   multi-label classification over all 80 COCO categories (a hit when the top class is one of the image's
#   categories), with chapter 4's prompt ensemble (the table below names it). The world's shape prompts are
#   chapter 4's five, so the clean shape accuracy here is chapter 4's "any object" number (chapter 8 checks
#   it); its colour task counts a hit for the colour of *any* object, whereas chapter 7 asks for the largest
#   object's colour, a different question with a different number. The scratch model also runs on the COCO
#   subset, where it has never seen a photo or most of the words: a chance-level control.
# - the three **fusion models** trained from scratch on the same world: **blip-world** (BLIP-like: an ITC dual
#   encoder plus an image-grounded text encoder with an ITM head), **qformer-world** (a Q-Former over
#   scratch-world's frozen ViT: ITC, max over queries, plus ITM) and **vilt-world** (ViLT-like single stream,
#   an ITM head only). Their word tokenizers know the world's words only, so, as in chapter 4, they are not
#   evaluated on COCO.
#
# The fusion models run chapter 4's two protocols. **ITC**: blip-world and qformer-world embed images and
# texts like any dual encoder (zero-shot and retrieval on all test images). **ITC top-$k$ → ITM re-rank**: an
# ITM head scores one (image, text) pair per forward pass, so it re-scores only the $k$ best candidates of an
# ITC ranking — blip-world and qformer-world their own (score ITM + ITC, as LAVIS), vilt-world
# scratch-world's (its ITM score alone). In a sweep every cell pays for those pairs again, so the re-ranking
# runs on the first `cross_max_images` test images with their captions, a data set of its own named
# `world[:n]`; every dual encoder is also scored by ITC on it, so each re-ranked row has an ITC row on the
# same images beside it. In the full profile the hub models (CLIP, BLIP, BLIP-2, ViLT) run on COCO and
# Flickr30k; there, by default, ViLT scores every image–text pair of the subset (`rerank_k=0`).

# %%
dev = sweep.resolve_device(cfg.device)
models = sweep.chapter_models(cfg, device=dev)
tasks = sweep.chapter_tasks(cfg, list(models))
plan = sweep.plan_sweep(models, tasks, rerank_k=cfg.rerank_k, first_stage=cfg.first_stage,
                        cross_max_images=cfg.cross_max_images)
protocols = sweep.protocol_table(plan, cfg.rerank_k, cfg.first_stage)
run.save_table(protocols, "sweep_overview")
protocols.set_index(["model", "dataset", "task"])

# %% [markdown]
# One image of each data set under the swept corruptions, at severities 0 (clean), 1, 3 and 5, as the
# model sees it (after its resize and crop, before its normalisation):

# %%
shown = {}
for m, ts in tasks.items():
    for t in ts:
        shown.setdefault(t.dataset, (models[m].preprocess, t))
for name, (pre, t) in shown.items():
    pixels, ids = sweep.unit_pixels(t.manifest, pre, n=2)
    fig = rplots.corruption_examples(pixels, CORRUPTIONS, severities=(0, 1, 3, 5), ids=ids, seed=cfg.seed,
                                     masks=P.ObjectMasks(t.manifest, pre), reference_size=cfg.reference_size,
                                     fill=cfg.occlusion_fill)
    fig.suptitle(name, y=1.01)
    run.savefig(fig, f"examples_{name}")

# %% [markdown]
# ## The sweep
#
# For each model and data set the text side is computed **once** (the zero-shot class embeddings, the
# caption embeddings); every cell then re-encodes only the images, corrupted on the model's device, and
# re-scores them against the same text embeddings (the re-ranked rows also score their image–text pairs
# again). On a CPU, models that do not depend on one another run side by side, one per torch thread
# (`workers`); every cell is computed the same way in any order. The metrics, all in percent:
#
# - zero-shot top-1 accuracy (multi-label data: a hit when the best-scoring class is one of the image's
#   labels; ties count against the model);
# - Recall@K in both directions over all captions: text→image (is the image among the $K$ best for its
#   caption?) and image→text (is any of its captions among the $K$ best texts?).
#
# The **relative robustness** of a cell is corrupted / clean. The ImageNet-C summary uses errors
# $E = 100 - \text{metric}$: for model $f$ and corruption $c$,
# $\mathrm{CE}^f_c = \sum_s E^f_{s,c} \big/ \sum_s E^{\text{base}}_{s,c}$, the **mCE** is its mean over
# corruptions, and the **relative mCE** replaces the errors by the degradations $E^f_{s,c} - E^f_{\text{clean}}$.
# Both need the baseline evaluated on the same data with the same metric.

# %%
import time

t0 = time.time()
timings, hit_frames = [], []
results = sweep.run_sweep(models, tasks, CORRUPTIONS, cfg.severities, seed=cfg.seed, ks=cfg.ks,
                          reference_size=cfg.reference_size, occlusion_fill=cfg.occlusion_fill,
                          batch_size=cfg.batch_size, cache_dir=cfg.cache_dir, cross_max_images=cfg.cross_max_images,
                          rerank_k=cfg.rerank_k, first_stage=cfg.first_stage, timings=timings, hits=hit_frames,
                          workers=cfg.workers or sweep.auto_workers(models))
sweep_seconds = time.time() - t0
hits = pd.concat(hit_frames, ignore_index=True)
run.save_table(results, "robustness_results")
run.save_table(report.hits_wide(hits), "per_image_hits")
run.save_table(pd.DataFrame(timings), "cell_timings")
run.glue("sweep_cells", len(timings))
run.glue("sweep_seconds", f"{sweep_seconds:.0f}")
report.clean_table(results, missing="–")  # "–": a metric the model does not have

# %%
chance = sweep.chance_levels(tasks)
run.save_table(chance, "zeroshot_chance")
chance.round(1)

# %% [markdown]
# The first table is the clean performance ({glue:text}`sweep_cells` cells in {glue:text}`sweep_seconds` s
# in this run; a rerun reads the embeddings from the cache and scores only the re-ranked pairs again), the
# second what random scores would reach in zero-shot top-1 on each label set (multi-label images make chance
# higher than one over the number of classes). A clean value near chance means the model has nothing to lose
# under corruption, whatever the curves below suggest. The tidy table `results/robustness_results.csv` has
# one row per model, data set, metric, corruption and severity; `results/per_image_hits.csv` has, for every
# image, its hits in every cell, from which every number of the table is recomputed (and resampled for the
# intervals below).
#
# ## Accuracy and recall against severity
#
# Each panel is one corruption; severity 0 is the clean value; one block of panels per data set. Solid degradation
# curves should fall monotonically: a rising curve over a few points usually means a small evaluation set,
# not a model that likes noise.

# %%
headline = sweep.headline_metrics(results)
fig = rplots.severity_curves(results, metrics=headline, ncols=4, by_dataset=True)  # one block per data set
run.savefig(fig, "severity_curves")

# %%
top = sweep.degradation_table(results, headline, chance=sweep.chance_table(results))
fig = rplots.relative_heatmap(results, metrics=headline, informative=top)  # rows under 2× chance: greyed out
run.savefig(fig, "relative_heatmap")

# %%
# every drop with its paired bootstrap interval over the images (clean and corrupted hits of the same images)
hit_table = rintervals.HitTable(hits)  # per model, data set and metric: every image's hits in every cell
top = rintervals.drop_intervals(hit_table, top, n_boot=cfg.n_boot, seed=cfg.seed)
for key, value in report.degradation_glue(top).items():
    run.glue(key, value)
# one row per metric and corruption: the page shows the largest drops, the CSV has every row
run.preview(top, "clean_vs_worst_severity", top=12, sort_by="drop",
            columns=["model", "dataset", "task", "metric", "corruption", "clean", "worst", "drop", "drop_lo", "drop_hi"])

# %% [markdown]
# A curve is *informative* when its clean value is at least twice chance (zero-shot: the table above;
# Recall@K: the exact chance of a random ranking, `vlnb.eval.chance` — $K/N$ text→image for $N$ images,
# higher image→text, where any of an image's captions counts); {glue:text}`n_uninformative` headline metrics are not, and are left
# out of the statements below. Each drop comes with a 95 % interval from a **paired bootstrap over images**:
# the test images are redrawn with replacement, {glue:text}`n_boot` times, and the clean and the corrupted
# value are recomputed on the same draw, so the interval is that of the *difference* (the per-image hits
# make this possible without re-encoding anything; `vlnb.robustness.intervals`). At the highest severity
# swept, the largest drop is {glue:text}`worst_desc`; for that same metric the mildest corruption is
# {glue:text}`mild_desc`. The worst corruption of each informative metric: {glue:text}`drops_desc`.

# %%
mono, glue = report.monotonicity_report(results, headline, top)
run.save_table(mono, "monotonicity")
for key, value in glue.items():
    run.glue(key, value)
rises = mono[~mono["monotone"]]  # the page shows the largest rises, the CSV has every curve
run.preview(rises, "monotonicity_rises", top=12, sort_by="max_rise") if len(rises) else print(
    "every headline curve is monotone within the tolerance")

# %% [markdown]
# {glue:text}`n_monotone` of the {glue:text}`n_curves` informative headline curves never rise by more than
# one image's worth of their own evaluation set ({glue:text}`mono_tolerance` points), the resolution of the
# metric there. The table lists the curves that do rise; curves at chance level (the scratch model on photos
# offline) wander up and down by noise: there is nothing left to lose.
#
# ## Fusion models against the dual encoder
#
# Is a model that fuses image and text inside one network more or less robust than one that only compares
# two embeddings? Each model's drop (clean − worst severity, averaged over the corruptions) is set beside the
# drop of the reference dual encoder, {glue:text}`comparison_reference`, **on the same images and the same
# metric** — a re-ranked row beside the reference's ITC row on the same re-rank subset — and the difference
# of the two drops gets a paired interval: each bootstrap draw of images is applied to both models and all
# corruptions. A drop in points favours a model that starts low (it has less to lose), so each comparison is
# also made *relative to the clean value* (the share of the clean hits lost). Rows where either model is under
# twice chance are faint in the figure and not compared.

# %%
# offline: scratch-world, whose ITC top-k vilt-world re-ranks (else the baseline)
reference = next((m for m in (cfg.first_stage, cfg.baseline) if m in models), next(iter(models)))
comparison = rintervals.reference_comparison(hit_table, top, reference, n_boot=cfg.n_boot, seed=cfg.seed,
                                             models=sweep.fusion_models(models))  # models with an ITM head
run.save_table(comparison, "reference_comparison")  # per corruption and averaged ("mean")
for key, value in report.comparison_glue(comparison, who="the fusion model").items():
    run.glue(key, Markdown(value) if key == "comparison_md" else value)
if (comparison["corruption"] == "mean").any():
    run.savefig(rplots.comparison_forest(comparison), "comparison_forest")
report.comparison_table(comparison)

# %% [markdown]
# Averaged over the corruptions, at the highest severity swept ({glue:text}`comparison_desc`):
#
# ```{glue:md} comparison_md
# :format: myst
# ```
#
# Where the verdict in points and the relative one differ, the smaller drop in points goes with a lower
# starting point rather than with keeping more of it. On the re-rank subset the ITM score is computed on corrupted pixels *and*
# starts from an ITC ranking of corrupted pixels, so it inherits the first stage's losses; and the subset is
# small, so its intervals are wide. The per-corruption rows are in `results/reference_comparison.csv`.
#
# ## A summary normalised by a baseline
#
# The mCE compares models on the *same* test: a value below 1 means fewer errors than the baseline under
# the same corruptions. Relative robustness and the relative mCE describe how much of its own clean
# performance a model keeps — and here a caution: a model at chance level keeps all of it. Its relative
# robustness is about 1 and its relative mCE about 0, which would read as "perfectly robust"; the
# absolute mCE does not fall into that trap.

# %%
base = cfg.baseline or next(iter(models))
summary = sweep.summarize(results, baseline=base if base in set(results["model"]) else None)
summary = rintervals.mce_intervals(hit_table, summary, base, n_boot=cfg.n_boot, seed=cfg.seed)
run.save_table(summary, "robustness_summary")
shown_summary, glue = report.summary_glue(summary, headline, base, informative=top)
for key, value in glue.items():
    run.glue(key, value)
report.summary_page(shown_summary)  # "–": no baseline on that data and metric

# %% [markdown]
# With {glue:text}`baseline` as the baseline (intervals: the same paired bootstrap over images, every
# corruption error recomputed for the model and the baseline on each draw): {glue:text}`mce_desc`.
#
# ## What to take away
#
# - Corruptions are applied to `[0, 1]` pixels before each model's own normalisation, in batches, with
#   per-image seeds: every model sees exactly the same corrupted images, and reruns reproduce them.
# - The sweep cost is image encoding: the text side is computed once per model, and the corruptions are
#   cheap tensor operations on the model's device (`benchmarks/robustness_cost.py` measures the split). An
#   ITM head or cross encoder pays per image–text pair in every cell, which is why it re-ranks a top-$k$
#   on a subset of the images.
# - Offline numbers come from small evaluation sets (the COCO subset has under a hundred images, the re-rank subset a few
#   dozen), so every drop and every difference above carries its paired bootstrap interval, and a
#   difference whose interval holds 0 is reported as "cannot be told apart", not as a ranking. The full
#   profile runs the same code on COCO's 5k test images and Flickr30k's 1k.
# - Relative robustness without the clean level is misleading: a model at chance cannot degrade. Report
#   clean accuracy, corrupted accuracy and mCE together, and compare models on the same images.

# %% [markdown]
# ## Exercises
#
# Each exercise runs on a CPU in a few minutes and writes its own run folder. Write your prediction down
# first, then compare the new run's `results/` tables with this page's (linked below).
#
# 1. **All five severities of two corruptions.** Predict whether the curves between severities 1, 3 and 5 on this page are straight lines.
#
#    ```bash
#    vlnb run notebooks/05_robustness.ipynb -p corruptions '["shot_noise", "occlusion"]' -p severities '[1, 2, 3, 4, 5]' --out runs/ex5-sev
#    ```
#
#    *What to look at:* `results/robustness_results.csv` and `figures/severity_curves.png` at severities 2 and 4.
#
# 2. **Where the occluder goes.** Predict whether a grey square in the centre hurts as much as one on the largest object.
#
#    ```bash
#    vlnb run notebooks/05_robustness.ipynb -p corruptions '["occlusion"]' -p occlusion centre --out runs/ex5-centre
#    ```
#
#    *What to look at:* the occlusion rows of `results/clean_vs_worst_severity.csv` against this page's (`occlusion = object`).
#
# ## This run's tables and figures
#
# Every table and figure this run wrote, as files (CSV, PNG):

# %%
run.downloads()
