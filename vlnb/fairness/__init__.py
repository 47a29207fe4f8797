"""Fairness: subgroup performance with real groups, real uncertainty and a bias planted on purpose.

- :mod:`vlnb.fairness.gender`     -- caption-derived perceived gender (Zhao et al. 2017; Hendricks et al. 2018)
- :mod:`vlnb.fairness.groups`     -- COCO category / supercategory / gender, offline-world attributes
- :mod:`vlnb.fairness.stats`      -- Wilson and Clopper-Pearson intervals (bootstrap: :mod:`vlnb.eval.bootstrap`)
- :mod:`vlnb.fairness.metrics`    -- per-query outcomes, per-group values with intervals, gaps, ratios, contrasts
- :mod:`vlnb.fairness.analysis`   -- every model x data set x grouping in one call
- :mod:`vlnb.fairness.controlled` -- retrain on the world with one group made rare and measure its gap
- :mod:`vlnb.fairness.plots`      -- per-group bars on a [0, 1] axis, gap versus rarity
"""

from .analysis import DEFAULT_GROUPINGS, SubgroupResult, subgroup_analysis, zeroshot_tasks
from .controlled import RarityResult, rarity_experiment, train_world_model, world_attribute_task
from .gender import (
    GENDER_LABELS,
    MAN_WORDS,
    WOMAN_WORDS,
    caption_words,
    gender_counts,
    gender_examples,
    gender_labels,
    label_captions,
    read_coco_captions,
)
from .groups import coco_groups, coco_supercategories, dataset_groups, world_groups
from .metrics import Outcomes, evaluate_outcomes, gap_table, group_contrast, group_table
from .stats import binomial_interval, clopper_pearson_interval, wilson_interval

__all__ = [
    "DEFAULT_GROUPINGS", "GENDER_LABELS", "MAN_WORDS", "WOMAN_WORDS", "Outcomes", "RarityResult", "SubgroupResult",
    "binomial_interval", "caption_words", "clopper_pearson_interval", "coco_groups", "coco_supercategories",
    "dataset_groups", "evaluate_outcomes", "gap_table", "gender_counts", "gender_examples", "gender_labels", "group_contrast",
    "group_table", "label_captions", "rarity_experiment", "read_coco_captions", "subgroup_analysis",
    "train_world_model", "wilson_interval", "world_attribute_task", "world_groups", "zeroshot_tasks",
]
