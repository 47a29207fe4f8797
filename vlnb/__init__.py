"""vlnb: the helper package behind the vlnb book.

Notebooks narrate; ``vlnb`` computes. The package, in its import layers (top imports from below, never up;
``[tool.importlinter]`` in pyproject.toml, CONTRIBUTING.md):

wiring
- :mod:`vlnb.cli`, :mod:`vlnb.__main__` -- the ``vlnb`` command (run, book, sweep, prepare)
- :mod:`vlnb.sweep`    -- parameter sweeps (local process pool or Dask) and collecting their tables
- :mod:`vlnb.runs`     -- papermill runs and the book build
- :mod:`vlnb.config`, :mod:`vlnb.params` -- typed, validated notebook parameters and profiles (one module per chapter)

chapters
- :mod:`vlnb.synthesis`  -- chapter 8: every chapter's headline finding, read from its result tables
- :mod:`vlnb.heads`      -- chapter 3: projection heads on frozen features
- :mod:`vlnb.comparison` -- chapter 4: every model on every data set, a trained text->image baseline
- :mod:`vlnb.robustness` -- chapter 5: image corruptions, sweeps, mCE
- :mod:`vlnb.interpret`  -- chapter 6: attention maps, relevancy, Grad-CAM, the pointing game
- :mod:`vlnb.fairness`   -- chapter 7: subgroup performance with intervals, a planted bias
- :mod:`vlnb.plots`      -- figures shared by the chapters (1, 3, 4), below them: `recall_bars`, galleries

models the book trains
- :mod:`vlnb.zoo` -- reference recipes (chapter 2 trains them), loading them, the models of each profile
  (`zoo.recipes`, `zoo.data`, `zoo.train`, `zoo.load`)

training and metrics
- :mod:`vlnb.train` -- contrastive (CLIP) and ITM training, checkpoints, data parallelism; chapter 2's report
- :mod:`vlnb.eval`  -- Recall@K, exact chance levels, zero-shot, re-ranking, bootstrap, feature cache, probes

data and models
- :mod:`vlnb.data`   -- one manifest format, loaders (COCO, Flickr30k, Pokemon, CIFAR-100, offline world), pixels
- :mod:`vlnb.models` -- one interface for dual and cross encoders (CLIP, BLIP, BLIP-2, ViLT, towers, scratch)

utilities
- :mod:`vlnb.device`, :mod:`vlnb.timing`, :mod:`vlnb.errors`, :mod:`vlnb.progress`, :mod:`vlnb.paths`

book tooling (imported by no module): :mod:`vlnb.bookext` (Sphinx extension), :mod:`vlnb.hygiene`.
"""

__version__ = "0.1.0"

from . import progress as _progress  # noqa: F401  (silences tqdm.auto's "IProgress not found", see there)
