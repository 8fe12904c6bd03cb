"""Prompt templates: how a label name becomes sentences for the text tower (open_clip's
zero_shot_metadata style: plain data, "{}" is the label name)."""

# A compact subset of the CLIP paper's ImageNet prompt ensemble.
IMAGE_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "itap of a {}.",
)
TEXT_TEMPLATES = (
    "{}",
    "This text is about {}.",
    "A message about {}.",
    "Category: {}.",
)
