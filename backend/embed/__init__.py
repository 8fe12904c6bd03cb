"""Task data -> vectors: fetch and decode items (fetch), frozen encoders (encoders, templates, prompts),
the batched embedding pipeline (pipeline) and the Chroma embedding store (store).

Components take explicit parameters; nothing here reads Settings or knows the other packages.
"""
from .encoders import Encoder, EncoderSpec, encoder_id, get_encoder
from .fetch import Fetcher, FetchError, decode_image
from .pipeline import EmbedResult, Item, embed_items
from .prompts import label_prompts, label_prototypes, query_prompts
from .store import CollectionIndex, EmbeddingStore, StoredItem, collection_name, content_hash, open_store, record_id
from .templates import IMAGE_TEMPLATES, TEXT_TEMPLATES

__all__ = [
    "CollectionIndex", "EmbedResult", "EmbeddingStore", "Encoder", "EncoderSpec", "FetchError", "Fetcher",
    "IMAGE_TEMPLATES", "Item", "StoredItem", "TEXT_TEMPLATES", "collection_name", "content_hash", "decode_image",
    "embed_items", "encoder_id", "get_encoder", "label_prompts", "label_prototypes", "open_store",
    "query_prompts", "record_id",
]
