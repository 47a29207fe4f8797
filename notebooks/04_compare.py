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
# # 4. Comparing CLIP, BLIP, BLIP-2 and ViLT
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/vlnb-book/vlnb/blob/main/notebooks/04_compare.ipynb)
#
# The student projects this book grew out of reported a ViLT that retrieved *perfectly* (R@1 = 1.0, an
# evaluation bug, on a patch grid that did not even match its input resolution), a BLIP-2 at R@1 = 0.00
# (its contrastive head was never used) and a CLIP with *negative* mean similarity. None of those numbers
# said anything about the models. This chapter compares the models under the published protocols, with
# the protocol written on every row of every table:
#
# * **Retrieval** uses *all* captions of an image. Image→text (I→T) is a hit at $k$ when *any* of the
#   image's ~5 captions is among the $k$ best texts; text→image (T→I) when the caption's one image is
#   among the $k$ best images. Ties are ranked pessimistically, so a constant model cannot score.
#   Evaluating with one caption per image instead costs I→T R@5 about 40 points.
# * **Dual encoders** (CLIP, the ITC heads of BLIP and BLIP-2) rank by cosine similarity of L2-normalised
#   embeddings; BLIP-2's image side is 32 query embeddings and the score is their *maximum*, as in LAVIS
#   {cite}`li2023blip2`.
# * **Cross encoders** (ViLT {cite}`kim2021vilt`, the ITM heads of BLIP {cite}`li2022blip` and BLIP-2)
#   score one (image, text) pair at a time, so they *re-rank* the top-$k$ candidates of a dual encoder:
#   $N\cdot k$ pairs instead of $N\cdot M$. That is a different protocol and its rows say so.
# * **Zero-shot classification** embeds a prompt ensemble per class (OpenAI's templates
#   {cite}`radford2021clip`) and picks the nearest class. COCO images show several categories, so a
#   prediction counts when it is *any* of the image's categories; a stricter *primary* variant (the
#   largest object's category) is reported beside it. Accuracies are proportions in $[0, 1]$.
#
# In the **offline** profile (this build) the hub checkpoints cannot be downloaded, so the models are the
# ones this book trains itself in {doc}`chapter 2 <02_clip_training>`: a from-scratch ViT + text transformer trained on the
# procedural world, and frozen ImageNet EfficientNet-Lite0 + all-MiniLM-L6-v2 towers with contrastive
# heads trained on 80 real COCO images. In the **full** profile (`profile="full"`, a GPU) the same cells
# evaluate `openai/clip-vit-base-patch32`, `Salesforce/blip-itm-base-coco`, `Salesforce/blip2-itm-vit-g-coco`
# (the COCO-fine-tuned BLIP-2 at 364 px, the checkpoint the BLIP-2 paper's retrieval numbers belong to) and
# `dandelin/vilt-b32-finetuned-coco` on the COCO Karpathy 5k test and Flickr30k 1k test splits, on the GPU
# (`device="auto"`), and the published numbers of *the same checkpoints* appear beside them.

# %%
# In Colab, install vlnb first (locally it is already installed with `pip install -e .`).
import sys

if "google.colab" in sys.modules:
    from IPython import get_ipython

    get_ipython().run_line_magic("pip", 'install -q "vlnb[all] @ git+https://github.com/vlnb-book/vlnb"')

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from vlnb import plots, zoo
from vlnb.config import NotebookRun
from vlnb.data.profiles import evaluation_manifest
from vlnb.device import precision_name, resolve_device
from vlnb.eval.compare import run_comparison, text_to_image_experiment
from vlnb.eval.published import PUBLISHED_ZEROSHOT, published_retrieval

run = NotebookRun.start("04_compare", globals())

# %% [markdown]
# ## Parameters
#
# `None` means the profile's default. `models` maps display names to hub ids or local folders (full
# profile) — that is how a sweep swaps `openai/clip-vit-base-patch32` for `…-large-patch14`, and how the
# tests run this chapter's full profile on tiny local checkpoints.

# %% tags=["parameters"]
profile = "offline"      # "offline": the book's own models, CPU | "full": hub checkpoints, GPU
out_dir = "."            # run folder for tables and figures
seed = 0
models = None            # display name -> hub id / folder (None: the profile's models)
datasets = None          # offline world, coco-mini, cifar100 | full coco, flickr30k, cifar100
max_images = None        # at most this many images per data set (None: all)
first_stage = None       # dual encoder whose ITC top-k a pure cross encoder (ViLT) re-ranks
rerank_k = None          # candidates per query re-ranked by ITM heads (LAVIS: 256 COCO, 128 Flickr)
coco_templates = None    # zero-shot prompts for COCO (offline: OpenAI's 7-prompt subset; full: all 80)
coco_root = None         # full profile: COCO 2017 folder
coco_karpathy_split = None
flickr30k_source = None
cifar100_source = None
pokemon_source = None
t2i_dataset = None       # text→image top-K experiment with a BERT+CNN baseline (full: pokemon)
t2i_test_fraction = None
baseline_epochs = None
batch_size = None
n_gallery = None         # captions per retrieval gallery
device = None            # "auto": CUDA when available, else CPU | "cpu" | "cuda" | "cuda:1"

# %%
cfg = run.params(globals())
pd.Series(cfg.model_dump(), name="value").to_frame()

# %% [markdown]
# ## Models and data
#
# `vlnb.zoo.profile_models` returns the models of the profile. Offline, a reference model that {doc}`chapter 2 <02_clip_training>`
# has not trained yet is trained now (a few minutes), so this chapter also runs on its own.

# %%
device = resolve_device(cfg.device)
models = zoo.profile_models(cfg.profile, models=cfg.models, device=device)
manifests, reports = {}, []
for name in cfg.datasets:
    manifests[name], report = evaluation_manifest(name, cfg, cfg.max_images)
    reports.append(report.assign(dataset=name))
bad = pd.concat(reports, ignore_index=True)
pd.DataFrame([{"model": n, "checkpoint": m.name, "family": m.family, "kind": type(m).__bases__[0].__name__,
               "device": str(m.device), "precision": precision_name(m.device) if m.dtype == torch.float32
               else str(m.dtype), "fingerprint": m.fingerprint()[:12]} for n, m in models.items()])

# %%
pd.DataFrame([{"dataset": n, "images": len(df), "captions": int(df["captions"].map(len).sum()),
               "skipped (bad images)": int((bad["dataset"] == n).sum())} for n, df in manifests.items()])

# %% [markdown]
# ## Running the evaluation
#
# One call evaluates every model on every data set it can read. Image and text embeddings are cached on
# disk (keyed by the weights' fingerprint, the preprocessing and the manifest's content), so re-running
# the chapter, or another chapter on the same model and data, does not re-encode anything.

# %%
retrieval, zeroshot, runs, coverage = run_comparison(
    models, manifests, first_stage=cfg.first_stage, rerank_k=cfg.rerank_k, coco_templates=cfg.coco_templates,
    batch_size=cfg.batch_size)
run.save_table(retrieval, "retrieval")
run.save_table(zeroshot, "zeroshot")
coverage

# %% [markdown]
# The coverage table is part of the result: a model whose word-level tokenizer was fit on the world's
# captions cannot read COCO captions or CIFAR class names, so it is *not evaluated* there rather than
# reported at chance.
#
# ## Retrieval
#
# Recall@K in percent, both directions, with the protocol and the chance level (a random ranking) on
# every row.

# %%
wide = retrieval.assign(metric=retrieval["direction"].map({"i2t": "I→T", "t2i": "T→I"}) + " R@" + retrieval["k"].astype(str))
table = wide.pivot_table(index=["dataset", "model", "protocol"], columns="metric", values="recall", sort=False).round(1)
chance = wide.pivot_table(index=["dataset"], columns="metric", values="chance", aggfunc="first").round(1)
chance.index = pd.MultiIndex.from_tuples([(d, "(random ranking)", "chance") for d in chance.index],
                                         names=table.index.names)
results_table = pd.concat([table, chance]).sort_index(level=0, sort_remaining=False)
run.save_table(results_table.reset_index(), "retrieval_wide")
results_table

# %%
fig = plots.recall_bars(retrieval, published=published_retrieval() if cfg.profile == "full" else None,
                        title="Recall@K per model (black ticks: chance; red diamonds: published)")
run.savefig(fig, "recall_bars")

# %%
best = retrieval[retrieval["k"] == 1].sort_values("recall", ascending=False).iloc[0]
run.glue("best_r1", f"{best['recall']:.1f}")
run.glue("best_r1_model", best["model"])
run.glue("best_r1_dataset", best["dataset"])
run.glue("best_r1_dir", "image→text" if best["direction"] == "i2t" else "text→image")
run.glue("best_r1_chance", f"{best['chance']:.1f}")

# %% [markdown]
# In this run the best Recall@1 is {glue:text}`best_r1`% ({glue:text}`best_r1_model`,
# {glue:text}`best_r1_dataset`, {glue:text}`best_r1_dir`), against a chance level of
# {glue:text}`best_r1_chance`%.
#
# ### Published numbers, with their protocols
#
# These are literature values (not measured here), listed with the checkpoint and the protocol that produced
# them. BLIP and BLIP-2 report ITC→ITM re-ranking with COCO-fine-tuned checkpoints, the final score being
# ITM + ITC, at LAVIS's depths: k = 256 on COCO and 128 on Flickr30k for BLIP, k = 128 on both for BLIP-2
# (`rerank_k="lavis"` in the full profile uses exactly these). The BLIP row is LAVIS's own evaluation of
# `model_base_retrieval_coco.pth`, the file `Salesforce/blip-itm-base-coco` was converted from (not the BLIP
# paper's 14M row); the BLIP-2 rows belong to `Salesforce/blip2-itm-vit-g-coco`; ViLT's are its ITM score
# alone, which is how its re-rank row here is scored too (an ITC+ITM mix is labelled as such). ITC-only
# numbers were never published for BLIP-2, which is why this chapter measures them itself. The headline
# "CLIP" numbers of the CLIP paper are ViT-L/14@336, not ViT-B/32. The red diamonds in the figure above are
# joined on the checkpoint's hub id and the stage (ITC or ITM), so a local or renamed model gets none.

# %%
pub = published_retrieval()
pub = pub.assign(metric=pub["direction"].map({"i2t": "I→T", "t2i": "T→I"}) + " R@" + pub["k"].astype(str))
pub.pivot_table(index=["dataset", "model", "protocol", "source"], columns="metric", values="recall", sort=False)

# %% [markdown]
# In the full profile the measured rows and these rows share data set, split and protocol, so they can
# be read side by side; a gap of more than a point or two means a protocol difference (or a bug) to
# chase. Offline the models are tiny and trained on tiny data, so the published numbers are a scale, not a
# target.
#
# ## Zero-shot classification

# %%
zs = zeroshot.copy()
zs_table = zs.set_index(["dataset", "model", "variant"])[
    ["top1", "top5", "mean_per_class_recall", "chance_top1", "n_classes", "n_templates", "n"]].round(3)
zs_table

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
import seaborn as sns

part = zs.assign(entry=zs["dataset"] + " · " + zs["variant"])
sns.barplot(data=part, y="entry", x="top1", hue="model", ax=ax)
for i, (_, r) in enumerate(part.drop_duplicates("entry").iterrows()):
    ax.plot([r["chance_top1"]] * 2, [i - 0.4, i + 0.4], color="black", lw=1.5)
ax.set_xlim(0, 1); ax.set_xlabel("zero-shot top-1 accuracy (proportion; black: chance)"); ax.set_ylabel("")
run.savefig(fig, "zeroshot_bars")

# %%
if len(PUBLISHED_ZEROSHOT) and cfg.profile == "full":
    display(PUBLISHED_ZEROSHOT)

# %% [markdown]
# ## What the models retrieve
#
# Numbers hide *how* a model fails. Each row below is a caption and the five images the model ranks
# highest for it; the correct image is framed in green. Near-misses that share the caption's objects or
# colours are the typical error of a contrastive model trained on little data.

# %%
for (name, ds), r in list(runs.items())[:3]:
    fig = plots.retrieval_gallery(r, manifests[ds], n_queries=cfg.n_gallery, k=5, seed=cfg.seed)
    run.savefig(fig, f"gallery_{name}_{ds}".replace("/", "-").replace(" ", "_"))

# %% [markdown]
# ## Text→image top-K against a trained baseline
#
# A seed project asked how far a *trained* text→image retriever built from off-the-shelf parts — a BERT
# sentence encoder and an ImageNet CNN with contrastive heads — gets against the zero-shot models on the
# Pokémon BLIP captions {cite}`pinkney2022pokemon`. `vlnb.eval.compare.text_to_image_experiment` splits the
# images 80/20, trains the baseline (frozen all-MiniLM-L6-v2 + EfficientNet-Lite0, MLP heads) on the train
# split and ranks the test images for every test caption with each model. It needs the Pokémon captions, so
# it runs in the full profile (`t2i_dataset="pokemon"`); offline it is skipped unless `t2i_dataset` names an
# offline data set.

# %%
if cfg.t2i_dataset:
    t2i_manifest, _ = evaluation_manifest(cfg.t2i_dataset, cfg, cfg.max_images)
    t2i, t2i_history = text_to_image_experiment(
        models, t2i_manifest, cfg.t2i_dataset, baseline_epochs=cfg.baseline_epochs,
        test_fraction=cfg.t2i_test_fraction, seed=cfg.seed, batch_size=cfg.batch_size)
    run.save_table(t2i, "text_to_image")
    display(t2i.pivot_table(index=["model", "protocol"], columns="k", values=["recall", "chance"]).round(1))
else:
    print("text→image experiment skipped (t2i_dataset is None in this profile)")

# %% [markdown]
# ## Reproducing and extending
#
# `vlnb run notebooks/04_compare.ipynb --profile full` evaluates the hub checkpoints (a GPU and the data
# sets are needed); `-p models '{"CLIP ViT-L/14": "openai/clip-vit-large-patch14"}'` adds a model, and
# `-p rerank_k 256` sets one depth for every model instead of LAVIS's per-model, per-data-set `k_test`. Every table above is also written to the run folder
# as CSV.

# %% [markdown]
# ## Exercises
#
# Each exercise runs on a CPU in a few minutes and writes its own run folder. Write your prediction down
# first, then compare the new run's `results/` tables with this page's (linked below).
#
# 1. **A smaller gallery.** Predict Recall@1 and its chance level on the world when only 100 test images are ranked instead of all of them.
#
#    ```bash
#    vlnb run notebooks/04_compare.ipynb -p datasets '["world"]' -p max_images 100 --out runs/ex4-100
#    ```
#
#    *What to look at:* the `recall` and `chance` columns of `results/retrieval.csv`: both rise, and only the ratio to chance is comparable across gallery sizes.
#
# 2. **Coco-mini only.** Predict which rows of the coverage table disappear and which numbers stay identical when the chapter evaluates coco-mini alone.
#
#    ```bash
#    vlnb run notebooks/04_compare.ipynb -p datasets '["coco-mini"]' --out runs/ex4-coco
#    ```
#
#    *What to look at:* `results/retrieval.csv`: the coco-mini rows equal this page's (same model, same images, cached features).
#
# ## This run's tables and figures
#
# Every table and figure this run wrote, as files (CSV, PNG):

# %%
run.downloads()
