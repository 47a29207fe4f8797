"""Prompt templates for zero-shot classification (data, with attribution).

- :data:`OPENAI_IMAGENET_TEMPLATES`: the 80 ImageNet prompt templates from OpenAI's CLIP repository,
  ``notebooks/Prompt_Engineering_for_ImageNet.ipynb`` (same order as there and as open_clip's
  ``OPENAI_IMAGENET_TEMPLATES``).
- :data:`CIFAR_TEMPLATES`: the 18 CIFAR-10/CIFAR-100 templates from OpenAI's CLIP repository,
  ``data/prompts.md`` (CLIP: Radford et al., 2021, MIT licence).
- The CIFAR-100 class names these prompts fill in: :data:`vlnb.data.classnames.CIFAR100_CLASSNAMES`.
- :data:`SIMPLE_TEMPLATES`: the single prompt ``"a photo of a {}."``.

Every template is a ``str.format`` pattern with one ``{}`` for the class name.
"""

from __future__ import annotations

OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)

SIMPLE_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

#: The 7-prompt subset of the 80 that OpenAI's prompt-engineering notebook selected for ImageNet (close to
#: the full ensemble's accuracy at a tenth of the text-encoding cost).
OPENAI_IMAGENET_7_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai_imagenet": OPENAI_IMAGENET_TEMPLATES,
    "cifar": CIFAR_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
    "openai_imagenet_7": OPENAI_IMAGENET_7_TEMPLATES,
}


def get_templates(name: str) -> tuple[str, ...]:
    """A template set by name: ``"openai_imagenet"`` (80), ``"cifar"`` (18) or ``"simple"`` (1)."""
    try:
        return TEMPLATE_SETS[name]
    except KeyError:
        raise KeyError(f"unknown template set {name!r}; known: {sorted(TEMPLATE_SETS)}") from None
