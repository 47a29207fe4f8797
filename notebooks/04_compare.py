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
#   Evaluating with one caption per image instead changes I→T recall: measured below, on the same
#   similarities.
# * **Dual encoders** (CLIP, the ITC heads of BLIP and BLIP-2) rank by cosine similarity of L2-normalised
#   embeddings; BLIP-2's image side is 32 query embeddings and the score is their *maximum*, as in LAVIS
#   {cite}`li2023blip2`.
# * **Cross encoders** (ViLT {cite}`kim2021vilt`, the ITM heads of BLIP {cite}`li2022blip` and BLIP-2)
#   score one (image, text) pair at a time, so they *re-rank* the top-$k$ candidates of a dual encoder:
#   $N\cdot k$ pairs instead of $N\cdot M$. That is a different protocol and its rows say so.
# * **Zero-shot classification** embeds a prompt ensemble per class (OpenAI's templates
#   {cite}`radford2021clip`) and picks the nearest class. COCO images show several categories, so a
#   prediction counts when it is *any* of the image's categories; a stricter *primary* variant (the
#   largest object's category) is reported beside it. Accuracies are in percent, like every recall and
#   accuracy of the book (`zeroshot.csv` keeps the proportions, in columns without `(%)`).
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
from IPython.display import display

from vlnb import plots, zoo
from vlnb.comparison import report, run_comparison, text_to_image_experiment
from vlnb.config import NotebookRun
from vlnb.data.profiles import evaluation_manifest
from vlnb.device import resolve_device
from vlnb.eval.intervals import interval_text, retrieval_intervals
from vlnb.eval.protocol_cost import cost_sentence, one_caption_cost
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
t2i_dataset = None       # text→image top-K with a BERT+CNN baseline (full: pokemon; "" skips it)
t2i_test_fraction = None
baseline_epochs = None
batch_size = None
n_gallery = None         # captions per retrieval gallery
device = None            # "auto": CUDA when available, else CPU | "cpu" | "cuda" | "cuda:1"
probe_max_images = None  # compositionality probe: world test images (None: all)
order_max_captions = None  # ARO-style order probe: at most this many captions (None: all)
order_dataset = None     # where the order probe reads captions (offline coco-mini | full coco)
negclip = None           # offline: also evaluate NegCLIP (hard-negative fine-tune) and its control
cost_gallery_sizes = None  # gallery sizes N of the query-cost table
n_boot = None            # bootstrap draws of the probes' intervals

# %%
cfg = run.params(globals())
run.params_table()

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
    manifests[name], skipped = evaluation_manifest(name, cfg, cfg.max_images)
    reports.append(skipped.assign(dataset=name))
bad = pd.concat(reports, ignore_index=True)
report.models_table(models)

# %%
report.datasets_table(manifests, bad)

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
# ### What one caption per image would cost
#
# The same similarity matrices, scored twice: with all captions of each image (the published protocol) and
# with only its first caption. Nothing is re-encoded.

# %%
cost = one_caption_cost([r for r in runs.values()])
run.save_table(cost, "one_caption_cost")
i2t5 = cost[(cost["direction"] == "i2t") & (cost["k"] == 5)]
run.glue("one_caption_cost_desc", cost_sentence(cost, "i2t", 5))
i2t5.set_index(["model", "dataset"])[["captions_per_image", "all captions", "first caption only", "cost",
                                      "chance (all)", "chance (first only)"]].round(1)

# %% [markdown]
# Image→text R@5, all captions → first caption only: {glue:text}`one_caption_cost_desc`. The chance level
# barely moves (it is about $K/N$ either way). Two things change, in opposite directions: an image has one
# correct caption instead of five, and it competes with five times fewer texts. The measured difference is
# what is left of the two — not the "tens of points" an evaluation gets when it keeps all captions as
# candidates but counts only one of them as correct.

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
results_table = report.retrieval_wide(retrieval)
run.save_table(results_table.reset_index(), "retrieval_wide")
results_table

# %%
fig = plots.recall_bars(retrieval, published=published_retrieval() if cfg.profile == "full" else None,
                        title="Recall@K per model")
run.savefig(fig, "recall_bars")
run.glue("n_published_markers", "no" if fig.n_published == 0 else str(fig.n_published))

# %%
intervals = retrieval_intervals(runs.values(), ks=(1, 5, 10), seed=cfg.seed)  # bootstrap over test images
run.save_table(intervals, "retrieval_intervals")
best = report.best_r1_glue(retrieval)
best["best_r1_ci"] = interval_text(intervals, best["best_r1_model"], best["best_r1_dataset"],
                                   "i2t" if best["best_r1_dir"] == "image→text" else "t2i")
for key, value in best.items():
    run.glue(key, value)
report.r1_interval_page(intervals)

# %% [markdown]
# Recall@1 of every dual encoder with its 95 % bootstrap interval over test images (an image carries its
# image→text query and all its captions' text→image queries). In this run the best Recall@1 is
# {glue:text}`best_r1`% ({glue:text}`best_r1_ci`; {glue:text}`best_r1_model`, {glue:text}`best_r1_dataset`,
# {glue:text}`best_r1_dir`), against a chance level of {glue:text}`best_r1_chance`%. Intervals that overlap
# widely mean the test set cannot rank the two models; a paired comparison on the same bootstrap draws (as
# in {doc}`chapter 3 <03_blip2_heads>`) is the sharper test.
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
# "CLIP" numbers of the CLIP paper are ViT-L/14@336, not ViT-B/32. Published numbers are drawn in the figure
# above (red diamonds) only where they join on the checkpoint's hub id and the stage (ITC or ITM), so a local
# or renamed model gets none; this run's figure draws {glue:text}`n_published_markers` of them (the offline
# models have no published numbers).

# %%
report.published_wide(published_retrieval())

# %% [markdown]
# In the full profile the measured rows and these rows share data set, split and protocol, so they can
# be read side by side; a gap of more than a point or two means a protocol difference (or a bug) to
# chase. Offline the models are tiny and trained on tiny data, so the published numbers are a scale, not a
# target.
#
# ## Zero-shot classification

# %%
report.zeroshot_table(zeroshot)

# %%
fig = report.zeroshot_bars(zeroshot)
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
# Pokémon BLIP captions {cite}`pinkney2022pokemon`. `vlnb.comparison.text_to_image_experiment` splits the
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
    display(report.t2i_page(t2i))
else:
    print("text→image experiment skipped (t2i_dataset is None in this profile)")

# %% [markdown]
# ## Compositionality: does word order matter to the model?
#
# Retrieval rewards a model for knowing *which* things a caption mentions; it barely asks whether the model
# knows *how* they are put together. ARO {cite}`yuksekgonul2023aro` showed that contrastive dual encoders
# often read a caption as a bag of words: "the horse is eating the grass" and "the grass is eating the
# horse" get almost the same score. The probe below measures this directly, on two kinds of data.
#
# **The world, with exact ground truth.** For every test image the probe writes a true caption in the
# world's grammar and *foils* of one kind at a time: two noun phrases' colours swapped (attribute swap),
# the two arguments of a spatial relation swapped (relation swap), one count changed, one shape replaced
# by a shape the image does not hold (object replacement, the easy control) and one colour replaced by an
# absent colour (a second control). Every foil is parsed back and checked against the scene; a foil that
# is not *false* for its image — swapping two equal colours, or two identical objects — is dropped, and
# the table below counts them. The metric is the share of (true, foil) pairs where the model scores the
# true caption higher, in percent: chance is 50 %, an exact tie counts one half (a bag-of-words model gives
# identical scores to a pure swap, so it sits at exactly 50 %), and the interval is a 95% bootstrap over images.
# Dual encoders are scored by the cosine of their embeddings (ITC), cross encoders by their ITM score; a
# model with both gets a row for each.
#
# **NegCLIP.** The fix ARO proposed is composition-aware hard negatives: during contrastive training each
# caption brings a swapped version of itself as an extra negative, so the loss can only fall if the text
# tower reads word order. Offline, `negclip-world` fine-tunes the scratch model for a few epochs with the
# grammar's swap foils (checked false for their image); `scratch-world-ft` is the control — the same
# fine-tune without them — so the comparison separates the foils from the extra epochs. Both train with
# chapter 2's models (its `train_ahead`) and are loaded here.

# %%
from vlnb.data.images import open_rgb
from vlnb.data.negatives import NEGATIVE_TYPES
from vlnb.eval.compositionality import (
    order_probe,
    probe_pivot,
    published_order_page,
    readable,
    retrieval_diff_page,
    retrieval_with_ci,
    say,
    with_published_order,
    world_probe,
)
from vlnb.eval.cost import cost_page, measure_cost

probe_models = dict(models)
if cfg.profile == "offline" and cfg.negclip:
    for recipe in ("negclip-world", "scratch-world-ft"):
        probe_models[recipe] = zoo.reference_model(recipe, device=device)
world_test, _ = evaluation_manifest("world", cfg, cfg.probe_max_images)
world_models, world_cover = readable(probe_models, [c for cs in world_test["captions"] for c in cs])
probe, dropped, probe_pairs = world_probe(world_models, world_test, n_boot=cfg.n_boot, seed=cfg.seed,
                                          batch_size=cfg.batch_size)
run.save_table(probe, "probe_world")
run.save_table(dropped, "probe_world_dropped")
dropped.set_index("type").T  # one column per foil type: fits the page

# %% [markdown]
# Foils generated, and dropped because they were not false for their image (the same text as the true
# caption, a true caption that names two identical objects as one, or a foil that still holds):

# %%
probe_pivot(probe)

# %%
fig, ax = plt.subplots(figsize=(10, 4))
plots.probe_plot(probe, ax=ax, title="World probe: true caption vs foil (95% bootstrap CI over images)")
run.savefig(fig, "probe_world")

# %%
first = next(iter(world_models))
pr = probe.set_index(["model", "head", "type"])
head0 = probe.loc[probe["model"] == first, "head"].iloc[0]
for t in NEGATIVE_TYPES:
    run.glue(f"probe_{t.replace(' ', '_')}", say(pr.loc[(first, head0, t)]))
run.glue("probe_model", f"{first} ({head0})")
swaps = probe[probe["type"].isin(["attribute swap", "relation swap"])]
above = swaps[swaps["ci_lo"] > swaps["chance"]]
run.glue("probe_swaps_above", ", ".join(sorted({f"{m} ({h})" for m, h in zip(above["model"], above["head"])}))
         or "no model")
run.glue("probe_n_dropped", f"{int(dropped[['dropped_identical', 'dropped_true_not_true', 'dropped_not_false']].sum().sum())}")
run.glue("probe_n_candidates", f"{int(dropped['candidates'].sum())}")

# %% [markdown]
# Of {glue:text}`probe_n_candidates` candidate foils, {glue:text}`probe_n_dropped` were dropped as not
# false. For {glue:text}`probe_model`, the true caption wins against an attribute swap
# {glue:text}`probe_attribute_swap`; against a relation swap {glue:text}`probe_relation_swap`; against a
# count change {glue:text}`probe_count_change`; against the object-replacement control
# {glue:text}`probe_object_replacement`; and against the colour-replacement control
# {glue:text}`probe_colour_replacement`. Models (and heads) whose interval on at least one of the two swaps
# lies above chance: {glue:text}`probe_swaps_above`.
#
# Read the swaps against the controls: a swap can only be solved by a model that sees both properties it
# exchanges, so a model that fails the object-replacement control (it does not tell the shapes apart) cannot
# be expected to bind colours to shapes either, whatever its text tower does.
#
# ### What NegCLIP buys, and what it costs
#
# The same probe for the plain scratch model, its NegCLIP fine-tune and the control fine-tune, and plain
# world retrieval (ITC, all captions) with the paired difference to the plain model — the price side of
# the trade.

# %%
if cfg.profile == "offline" and cfg.negclip:
    trio = ["scratch-world", "scratch-world-ft", "negclip-world"]
    trio = [m for m in trio if m in world_models]
    display(probe_pivot(probe[probe["model"].isin(trio)]))
    neg_ret = retrieval_with_ci({m: world_models[m] for m in trio}, world_test, "world", baseline="scratch-world",
                                n_boot=cfg.n_boot, seed=cfg.seed, batch_size=cfg.batch_size)
    run.save_table(neg_ret, "negclip_retrieval")
    display(retrieval_diff_page(neg_ret))  # % (points vs scratch-world [95 % paired bootstrap CI])
    h = {m: zoo.reference_history(m) for m in ("negclip-world", "scratch-world-ft")}
    pn = pr.xs("ITC", level="head")

    def _delta(t):
        d = pn.loc[("negclip-world", t), "accuracy"] - pn.loc[("scratch-world-ft", t), "accuracy"]
        return f"{100 * d:+.1f} points"

    for t in ("attribute swap", "relation swap", "count change"):
        run.glue(f"negclip_{t.replace(' ', '_')}", say(pn.loc[("negclip-world", t)]))
        run.glue(f"negclip_vs_ft_{t.replace(' ', '_')}", _delta(t))
    r1 = neg_ret[(neg_ret["k"] == 1)].set_index(["model", "direction"])
    for d in ("i2t", "t2i"):
        row = r1.loc[("negclip-world", d)]
        run.glue(f"negclip_r1_{d}", f"{row['recall']:.1f}% ({row['diff']:+.1f} points vs scratch-world, "
                                    f"95% CI [{row['diff_lo']:+.1f}, {row['diff_hi']:+.1f}])")
    run.glue("negclip_train_s", f"{sum(e['epoch_time_s'] for e in h['negclip-world'].epochs):.0f}")
    run.glue("negclip_ft_train_s", f"{sum(e['epoch_time_s'] for e in h['scratch-world-ft'].epochs):.0f}")
else:
    for key in ("negclip_attribute_swap", "negclip_relation_swap", "negclip_count_change",
                "negclip_vs_ft_attribute_swap", "negclip_vs_ft_relation_swap", "negclip_vs_ft_count_change",
                "negclip_r1_i2t", "negclip_r1_t2i", "negclip_train_s", "negclip_ft_train_s"):
        run.glue(key, "(not run in this profile)")

# %% [markdown]
# NegCLIP's fine-tune ({glue:text}`negclip_train_s` s of training; the control {glue:text}`negclip_ft_train_s` s)
# scores {glue:text}`negclip_attribute_swap` on attribute swaps ({glue:text}`negclip_vs_ft_attribute_swap`
# against the control fine-tune), {glue:text}`negclip_relation_swap` on relation swaps
# ({glue:text}`negclip_vs_ft_relation_swap`) and {glue:text}`negclip_count_change` on count changes
# ({glue:text}`negclip_vs_ft_count_change`, a type it was not trained on). Its plain world retrieval is
# R@1 {glue:text}`negclip_r1_i2t` image→text and {glue:text}`negclip_r1_t2i` text→image. The foils are
# drawn from the same grammar as the probe's swaps (on training images, never test images), so a gain
# here is the in-distribution best case — ARO's NegCLIP was likewise trained on COCO swaps and tested on
# COCO-Order.
#
# ### Word order on real captions (ARO's COCO-Order)
#
# ARO's COCO-Order takes every caption and four word-order perturbations of it — nouns and adjectives
# shuffled among themselves, everything *but* nouns and adjectives shuffled, words shuffled within each
# trigram, trigrams shuffled — and asks which of the five the model prefers for the image (chance 20 %;
# ties share the credit). ARO tags parts of speech with spaCy's `en_core_web_sm`, a download that is not
# possible offline; vlnb tags with a closed word list (`vlnb.data.negatives`), which is deterministic and
# offline but not identical to spaCy, so the perturbations are ARO-*style*, not ARO's exact test cases
# (ARO's own are random too: its authors average 5 seeds). Pairwise rows (the original against each kind
# of shuffle, chance 50 %) say which perturbation a model notices.

# %%
order_manifest, _ = evaluation_manifest(cfg.order_dataset, cfg, None)
order_models, order_cover = readable(probe_models, [c for cs in order_manifest["captions"] for c in cs])
order, order_cases = order_probe(order_models, order_manifest, max_captions=cfg.order_max_captions,
                                 n_boot=cfg.n_boot, seed=cfg.seed, batch_size=cfg.batch_size,
                                 dataset=cfg.order_dataset)
order = with_published_order(order, order_models)
run.save_table(order, "probe_order")
display(order_cover)
display(probe_pivot(order))
if order["published"].notna().any():  # full profile: ARO's figure for the same checkpoint, beside ours
    shown = order[order["published"].notna()][["model", "head", "dataset", "accuracy", "ci_lo", "ci_hi",
                                               "published", "published_source"]]
    pct = ["accuracy", "ci_lo", "ci_hi", "published"]
    display(shown.assign(**{c: (100 * shown[c]).round(1) for c in pct}).rename(columns={c: f"{c} (%)" for c in pct}))

# %%
fig, ax = plt.subplots(figsize=(10, 4))
plots.probe_plot(order, ax=ax, title=f"ARO-style order probe on {cfg.order_dataset} (dashed: chance)")
run.savefig(fig, "probe_order")
aro5 = order[order["type"] == "ARO 5-way"]
run.glue("order_summary", "; ".join(f"{m} ({h}) {say(r)}" for (m, h), r in
                                    aro5.set_index(["model", "head"]).iterrows()) or "no model could read them")
run.glue("order_n_cases", f"{order_cases['case'].nunique()}")

# %% [markdown]
# On {glue:text}`order_n_cases` captions, the share of cases where the original caption is the model's
# choice among the five (chance 0.20): {glue:text}`order_summary`.
#
# ARO's published numbers (COCO-Order on the Karpathy test captions, Flickr30k-Order on Flickr30k's; the same
# 5-way protocol). They belong to the full profile's checkpoints, not to the offline models: the BLIP row is
# a third-party re-run of ARO's own code on the COCO-fine-tuned BLIP-base (ARO's paper lists BLIP too; that
# figure could not be checked here, so it is not transcribed).

# %%
published_order_page()

# %% [markdown]
# ## What each model costs
#
# The other side of the trade-off, measured in this run on this machine: parameters, the weights' memory,
# the memory one forward pass adds on top of them (CUDA's allocator peak on a GPU; on a CPU the sampled
# resident-set growth, a lower bound that reads 0 when the allocator reuses memory it already holds),
# images and texts encoded per second (dual encoders and ITC heads; decoding excluded), pairs scored per
# second (cross encoders and ITM heads), and the time to answer one text query over a gallery of N images:
# a dual encoder embeds the gallery once (the index) and then needs one text forward pass and one matrix
# product; a cross encoder needs one forward pass per image; ITC top-k + ITM pays the product plus k pairs.
# Values marked `*` are extrapolated from the per-pair time (hollow markers in the plot); everything else
# ran at that N.

# %%
cost_images = [open_rgb(src) for src in list(world_test["image"])[:8]]
cost_texts = [c for cs in world_test["captions"][:32] for c in cs]
cost_models, queries = measure_cost(models, cost_images, cost_texts, gallery_sizes=cfg.cost_gallery_sizes,
                                    rerank_k=16, batch_size=min(cfg.batch_size, 32))
run.save_table(cost_models, "cost_models")
run.save_table(queries, "cost_queries")
cost_page(cost_models, queries)

# %%
fig, ax = plt.subplots(figsize=(8, 4.5))
plots.query_time_plot(queries, ax=ax)
run.savefig(fig, "query_time")
for key, value in report.cost_glue(queries).items():
    run.glue(key, value)

# %% [markdown]
# At N = {glue:text}`cost_n` images the fastest query is {glue:text}`cost_fastest` and the slowest
# {glue:text}`cost_slowest`. From N = {glue:text}`cost_nmin` to {glue:text}`cost_n` (×{glue:text}`cost_n_ratio`
# images) the time per query grows by: {glue:text}`cost_growth`. A protocol whose factor is close to the
# gallery's own growth pays per image at query time; one whose factor stays near 1 has moved that work into
# the index. Whatever the probe above shows a fusion model buys, this is the price it is paid with.

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
