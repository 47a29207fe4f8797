"""vlnb: the helper package behind the vlnb book.

Notebooks narrate; ``vlnb`` computes. Sub-packages:

- :mod:`vlnb.data`    -- one manifest format, loaders (COCO, Flickr30k, Pokemon, CIFAR-100, offline world)
- :mod:`vlnb.models`  -- one interface for dual and cross encoders (CLIP, BLIP, BLIP-2, ViLT, towers)
- :mod:`vlnb.eval`    -- retrieval, zero-shot classification, feature cache
- :mod:`vlnb.config`  -- typed, validated notebook parameters and profiles
- :mod:`vlnb.runs`    -- papermill runs and the book build
- :mod:`vlnb.sweep`   -- parameter sweeps (local process pool or Dask) and collecting their tables
"""

__version__ = "0.1.0"
