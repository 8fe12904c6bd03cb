"""Label Studio ML backend: CLIP zero-shot pre-annotation with a Chroma embedding store."""
__version__ = "0.1.0"
