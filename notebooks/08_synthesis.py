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
# # 8. What we measured
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/vlnb-book/vlnb/blob/main/notebooks/08_synthesis.ipynb)
#
# This chapter computes nothing new. It reads the result tables that chapters 1–7 wrote in this build
# (`results/*.csv` of each run folder) and puts each chapter's headline finding in one table, with its
# interval and its chance level, so that the book's claims can be read side by side — and checked: two
# chapters that measure the same model on the same images must report the same number.

# %%
# In Colab, install vlnb first (locally it is already installed with `pip install -e .`).
import sys

if "google.colab" in sys.modules:
    from IPython import get_ipython

    get_ipython().run_line_magic("pip", 'install -q "vlnb[all] @ git+https://github.com/vlnb-book/vlnb"')

# %%
from pathlib import Path

from vlnb import synthesis
from vlnb.config import NotebookRun

run = NotebookRun.start("08_synthesis", globals())

# %% [markdown]
# ## Parameters
#
# `runs_dir` is the folder with one run folder per chapter; `None` means the folder that holds this
# chapter's own run folder, which is where `vlnb book` puts every chapter's run.

# %% tags=["parameters"]
profile = "offline"   # the profile of the runs that are read (this chapter itself needs neither GPU nor network)
out_dir = "."         # run folder for tables
seed = 0
runs_dir = None       # folder holding 01_data_prep/, 02_clip_training/ … (None: this run's parent folder)

# %%
cfg = run.params(globals())
runs = Path(cfg.runs_dir) if cfg.runs_dir else run.out_dir.parent
found = sorted(p.name for p in runs.iterdir() if (p / "results").is_dir() and p.name[:2].isdigit())
run.glue("n_runs", len(found))
print(f"reading {len(found)} chapter runs in {runs.name}/: {', '.join(found)}")

# %% [markdown]
# ## One table of headline findings
#
# Every recall and accuracy is a percentage, every difference a number of percentage points, read as the
# chapters' tables hold them. The `interval` column says what kind of interval each row carries: bootstrap
# over test images (chapters 3 and 6), Student-t over training seeds (chapter 2's attention variants and
# chapter 7's planted rarity), a Wilson interval for image→text Recall@1 (one query per image: a binomial
# proportion) — or that the chapter's table has none.

# %%
table = synthesis.headlines(runs)
run.save_table(table, "headlines")  # the numbers; the page shows them formatted, with their intervals
run.preview(synthesis.page_table(table), "headlines_page", top=40)

# %% [markdown]
# ## Do the chapters agree with each other?
#
# {doc}`Chapter 2 <02_clip_training>` evaluates the models it trains on their held-out test sets;
# {doc}`chapter 3 <03_blip2_heads>` evaluates the towers' model again as its offline "pretrained head"
# (through frozen features), and {doc}`chapter 4 <04_compare>` evaluates both models again through the
# feature cache and the comparison code, on the same images. Chapter 4's zero-shot shape accuracy of the
# from-scratch model ("any object", its five prompts) is measured again by {doc}`chapter 5 <05_robustness>`
# on the clean images, with the same classes, prompts and label rule. {doc}`Chapter 7 <07_fairness>` keeps
# every image's outcome to cut the test set into groups; summed over all images, its zero-shot shape accuracy
# (largest object) and the fusion models' ITC image→text R@1 must be chapter 4's. They must agree; a
# difference would mean that one of the evaluations is wrong.

# %%
agreement = synthesis.consistency(runs)
run.save_table(agreement, "consistency")
checked = agreement.dropna(subset=["agree"])
run.glue("n_checked", len(checked))
run.glue("n_agree", int(checked["agree"].astype(bool).sum()))
agreement.round(2).astype(object).where(agreement.notna(), "not run")

# %% [markdown]
# {glue:text}`n_agree` of the {glue:text}`n_checked` numbers measured in both chapters agree to 0.05 points.
#
# ## What holds at scale, and what does not
#
# The offline build trains small models on small data, so its numbers are not the models' numbers at
# scale. What carries over is the *method* and some of the *directions*:
#
# - **Protocol effects hold at any scale.** Ranking all captions of an image, pessimistic ties, chance
#   levels computed from the test set, and using a model's own contrastive head (BLIP-2's max over
#   queries) change numbers by amounts that do not depend on the model's size; they are checked by the
#   tests, not by the offline numbers.
# - **Effect sizes do not carry over.** A from-scratch ViT trained for minutes on procedural scenes, and
#   heads trained on 80 photos, are far from CLIP trained on 400M pairs; the full profile measures the
#   hub checkpoints on COCO's 5k and Flickr30k's 1k test images, where intervals are a few points wide
#   instead of tens.
# - **Small groups and small test sets decide little.** The coco-mini test set has 79 images;
#   {doc}`chapter 7 <07_fairness>`'s
#   groups of a few dozen images are flagged, not ranked. The full profile's groups hold hundreds.
# - **Controlled experiments transfer as experiments.** The planted rarity of {doc}`chapter 7 <07_fairness>`
#   and the corruption sweep of {doc}`chapter 5 <05_robustness>` are causal designs; their offline direction (rarer in training, worse at
#   test; stronger corruption, lower accuracy) is what one expects at scale, their size is not.
#
# ## Where the offline and full profiles differ, and why
#
# | | offline | full | why it matters |
# |---|---|---|---|
# | models | trained in {doc}`chapter 2 <02_clip_training>` (a tiny ViT; frozen EfficientNet-Lite0 + MiniLM with heads) | CLIP ViT-B/32, BLIP, BLIP-2, ViLT from the hub | offline numbers describe the book's models, not the published ones |
# | retrieval test sets | world (procedural), coco-mini val2017 (79 images) | COCO Karpathy 5k, Flickr30k 1k | chance is $k/N$: far higher on 79 images, so compare to chance, not across sets |
# | intervals | wide (tens of points on coco-mini) | a few points | many offline comparisons "cannot be told apart" |
# | zero-shot classes | shapes and colours of the world, COCO categories present in coco-mini | all 80 COCO categories, CIFAR-100 | fewer classes, higher chance |
# | cross encoders (ITM re-ranking, ViLT) | not available | BLIP / BLIP-2 ITM, ViLT | the re-ranking protocol exists only in the full profile |
# | published numbers | none drawn | beside the measured rows | only the full profile shares models, splits and protocol with the literature |

# %% [markdown]
# ## This run's tables

# %%
run.downloads()
