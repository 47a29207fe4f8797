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
# # 1. Data preparation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/vlnb-book/vlnb/blob/main/notebooks/01_data_prep.ipynb)
#
# Every number in this book is computed on a **manifest**: one table per data set with one row per
# image — its id, the image (a file path, or the encoded bytes for in-memory sources), *all* of its
# captions, its split, its class labels — plus metadata columns (sizes, attributes, groups) used later
# for subgroup analyses. Boxes and masks that do not fit a table cell stay reachable by `image_id`.
# This chapter builds the manifests of the current profile, looks at them, and reports every image
# that had to be skipped.

# %%
# In Colab, install vlnb first (locally it is already installed with `pip install -e .`).
import sys

if "google.colab" in sys.modules:
    from IPython import get_ipython

    get_ipython().run_line_magic("pip", 'install -q "vlnb[all] @ git+https://github.com/vlnb-book/vlnb"')

# %%
import matplotlib.pyplot as plt

import vlnb
from vlnb import plots
from vlnb.config import NotebookRun
from vlnb.data import get_annotations
from vlnb.data.profiles import overview, profile_manifests

run = NotebookRun.start("01_data_prep", globals())

# %% [markdown]
# ## Parameters
#
# The next cell is papermill's `parameters` cell. `None` means *the profile's default*; every value is
# validated by `vlnb.config` (a misspelt name or a wrong type stops the run and names the parameter).

# %% tags=["parameters"]
profile = "offline"           # "offline": CPU, no network | "full": COCO 2017 + hub data sets
out_dir = "."                 # run folder for tables and figures
seed = 0
world_n_train = None          # offline world: training images (None: profile default)
world_n_test = None           # offline world: test images
world_image_size = None       # offline world: image side in pixels
coco_root = None              # COCO 2017 folder (None offline: the real coco-mini subset)
coco_karpathy_split = None    # Karpathy's dataset_coco.json (full profile: the 5k test split)
flickr30k_source = None       # hub id / local copy of Flickr30k (full profile)
pokemon_source = None         # hub id / local copy of the Pokémon BLIP captions (full profile)
cifar100_source = None        # hub id / npz of CIFAR-100 (None offline: 916 real test images)
n_grid = None                 # images in each example grid
device = None                 # "auto": CUDA when available, else CPU (this chapter runs no model)

# %%
cfg = run.params(globals())
run.params_table()

# %% [markdown]
# ## The data sets
#
# | data set | what it is | used for | licence |
# |---|---|---|---|
# | **offline world** (this book) | procedurally generated scenes in the spirit of CLEVR {cite}`johnson2017clevr`: 1–3 shapes of several colours and sizes on named backgrounds, 5 true captions each (counts, spatial relations), exact masks and boxes | training from scratch, robustness, attention pointing game, controlled fairness experiments | generated here, no restrictions |
# | **COCO 2017** {cite}`lin2014coco` with captions {cite}`chen2015cococaptions` | 123k photos, ~5 human captions each, 80 object categories with boxes and masks | retrieval (Karpathy 5k test split {cite}`karpathy2015deep`), zero-shot multi-label classification, masks for pointing | annotations CC BY 4.0; images under their Flickr licences |
# | **Flickr30k** {cite}`young2014flickr` | 31k photos, 5 captions each | retrieval (Karpathy 1k test) | Flickr terms; research use |
# | **CIFAR-100** {cite}`krizhevsky2009cifar` | 32×32 photos of 100 classes | zero-shot classification, paired-image training | MIT-style (Toronto) |
# | **Pokémon BLIP captions** {cite}`pinkney2022pokemon` | 833 Pokémon images with BLIP-generated captions | text→image top-K with a BERT+CNN baseline | CC BY-NC-SA 4.0 |
#
# The offline profile uses the world, a real subset of COCO 2017 (`coco-mini`: the official files cut
# down to a few images) and the first 916 real images of the CIFAR-100 test set, all without network.
# The full profile uses the full sets.
#
# **Why every caption counts.** COCO and Flickr30k give each image about five captions written by
# different people. The published retrieval protocol ranks *all* of them: an image→text query is a hit
# at $k$ when *any* of the image's captions is among the top $k$ texts, and each caption is a
# text→image query with exactly one correct image. Keeping one caption per image turns a 5-way target
# into a 1-way target (and removes four of every five candidate texts); {doc}`chapter 4 <04_compare>` measures
# what that does to image→text Recall@K, on the same similarities, for every model and data set. The manifest therefore always keeps the full caption
# list.

# %%
manifests, bad_images = profile_manifests(cfg)
table = overview(manifests)
run.save_table(table, "manifest_overview")
table

# %%
n_images = int(table["images"].sum())
n_captions = int(table["captions"].sum())
run.glue("n_images", n_images)
run.glue("n_captions", n_captions)
run.glue("n_bad", len(bad_images))
run.glue("n_datasets", len(manifests))
for name, df in manifests.items():
    path = run.path(f"manifests/{name}.parquet")
    vlnb.data.save_manifest(df, path, report=bad_images[bad_images["dataset"] == name].drop(columns="dataset"))
print(f"{len(manifests)} manifests written to {run.out_dir / 'manifests'}")

# %% [markdown]
# This run built {glue:text}`n_datasets` manifests with {glue:text}`n_images` images and
# {glue:text}`n_captions` captions in all; {glue:text}`n_bad` images were skipped (the report is at the
# end of the chapter).
#
# ## The offline world
#
# Each scene is generated from the seed and its index alone, so the same seed gives the same bytes on
# any machine, and any single image can be regenerated (with its masks) without the others. Captions
# are produced by a small grammar from the scene itself: objects with their size, colour and shape,
# counts ("two green squares"), spatial relations computed from the objects' centres ("left of",
# "above") and the background.

# %%
world = manifests["world"]
fig = plots.image_grid(world, n=cfg.n_grid, ncols=6, seed=cfg.seed, width=26)
run.savefig(fig, "world_grid")

# %%
row = world.iloc[0]
print("\n".join(row["captions"]))
objs = get_annotations(world, row["image_id"])
fig, axes = plt.subplots(1, len(objs) + 1, figsize=(2.2 * (len(objs) + 1), 2.4))
axes[0].imshow(vlnb.data.open_rgb(row["image"]), interpolation="nearest"); axes[0].set_title("image", fontsize=8)
for ax, o in zip(axes[1:], objs):
    ax.imshow(o.mask, cmap="gray", interpolation="nearest"); ax.set_title(o.category, fontsize=8)
for ax in axes: ax.axis("off")
run.savefig(fig, "world_masks")

# %% [markdown]
# ## COCO
#
# COCO is loaded with `pycocotools` exactly as the full data set is: captions from `captions_*.json`,
# categories, boxes and masks (`annToMask`) from `instances_*.json`. Image files that have no
# annotation are ignored rather than crashing the load; with a Karpathy split file only the images of
# the requested split are kept (the 5k test images of the full profile).

# %%
coco_name = "coco-mini" if "coco-mini" in manifests else "coco"
coco = manifests[coco_name]
fig = plots.image_grid(coco, n=min(cfg.n_grid, 8), ncols=4, seed=cfg.seed)
run.savefig(fig, "coco_grid")

# %%
row = coco[coco["n_instances"] > 0].iloc[0]
objs = get_annotations(coco, row["image_id"])
img = vlnb.data.open_rgb(row["image"])
fig, ax = plt.subplots(figsize=(5, 4))
ax.imshow(img)
for o in objs:
    ax.contour(o.mask, levels=[0.5], linewidths=1.2)
    x, y, w, h = o.bbox
    ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, lw=0.8, color="white"))
ax.set_title(f"image {row['image_id']}: " + ", ".join(sorted({o.category for o in objs})), fontsize=8)
ax.axis("off")
run.savefig(fig, "coco_masks")

# %% [markdown]
# ## How long are the captions, and which labels are common?
#
# The world's grammar writes shorter, more regular captions than people do; the comparison below is
# worth keeping in mind when a model trained on one is evaluated on the other.

# %%
captioned = {k: v for k, v in manifests.items() if sum(map(len, v["captions"])) > 0}
fig = plots.caption_length_plot(captioned)
run.savefig(fig, "caption_lengths")
lengths = plots.caption_lengths(captioned).groupby("dataset")["words"].describe()[["count", "mean", "50%", "max"]]
run.save_table(lengths.reset_index(), "caption_lengths")
lengths

# %%
fig = plots.label_frequency_plot(coco, "labels", top=20, title=f"{coco_name}: share of images per category")
run.savefig(fig, "coco_categories")
fig = plots.label_frequency_plot(world[world["split"] == "train"], "colours", top=20, title="world (train): share of images per colour")
run.savefig(fig, "world_colours")

# %% [markdown]
# ## Images that were skipped
#
# Every image is decoded once while the manifest is built: EXIF orientation is applied and CMYK,
# grayscale, palette, transparent and 16-bit images are converted to RGB. Files that are missing,
# empty, truncated or not images at all are skipped and listed here (and in a CSV next to each
# manifest), so a long run never dies on one bad file. The same report is what `vlnb prepare` prints.

# %%
run.save_table(bad_images, "bad_images")
bad_images if len(bad_images) else print("no image was skipped in this run")

# %% [markdown]
# ## Exercises
#
# Each exercise runs on a CPU in a few minutes and writes its own run folder. Write your prediction down
# first, then compare the new run's `results/` tables with this page's (linked below).
#
# 1. **A smaller world, at a lower resolution.** Predict how the caption-length statistics and the share of images per colour change when the world has 500 training images of 32 pixels instead of the defaults.
#
#    ```bash
#    vlnb run notebooks/01_data_prep.ipynb -p world_n_train 500 -p world_image_size 32 --out runs/ex1-small
#    ```
#
#    *What to look at:* `results/caption_lengths.csv` (same grammar: the mean length should barely move) and `figures/world_colours.png` (shares within a few points: fewer images, more noise).
#
# 2. **Another seed.** Predict which numbers of `results/manifest_overview.csv` change with `seed`.
#
#    ```bash
#    vlnb run notebooks/01_data_prep.ipynb -p seed 1 --out runs/ex1-seed1
#    ```
#
#    *What to look at:* the counts stay, the scenes in `figures/world_grid.png` differ: the world is a function of the seed and the image index.
#
# ## This run's tables and figures
#
# Every table and figure this run wrote, as files (CSV, PNG):

# %%
run.downloads()
