"""What the critic needs from the supervision tables: SFT examples and the embedding requests
of every tuple, in one place so the tuning, embedding and QQT steps agree."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from PIL import Image

from eliq_pipeline.critic.embedding_cache import EmbeddingCache, EmbeddingRequest
from eliq_pipeline.critic.head.ranking import TupleEmbeddings


def tuple_requests(row: dict[str, Any], negative_alignment: bool = True) -> dict[str, EmbeddingRequest]:
    """The embeddings a tuple needs. Each image is scored independently (3.3.5); a visual negative
    is paired with the original prompt for its (unused by the loss) alignment branch, or, with
    `negative_alignment=False`, shares I+'s z_ali (see TupleEmbeddings): the two sides of a visual
    pair then differ only in their visual embeddings, and two of ten queries per tuple are saved."""
    pos, tec, aes, p, p_neg = row["positive_sha256"], row["tec_sha256"], row["aes_sha256"], row["prompt"], row["mismatched_prompt"]
    ali_image = row.get("ali_sha256") or pos  # the alignment-negative pair is (ali_image, p_neg)
    requests = {
        "pos_tec": EmbeddingRequest(pos, "tec", None),
        "pos_aes": EmbeddingRequest(pos, "aes", None),
        "pos_ali": EmbeddingRequest(pos, "ali", p),
        "neg_ali": EmbeddingRequest(ali_image, "ali", p_neg),
        "tecneg_tec": EmbeddingRequest(tec, "tec", None),
        "tecneg_aes": EmbeddingRequest(tec, "aes", None),
        "tecneg_ali": EmbeddingRequest(tec, "ali", p),
        "aesneg_tec": EmbeddingRequest(aes, "tec", None),
        "aesneg_aes": EmbeddingRequest(aes, "aes", None),
        "aesneg_ali": EmbeddingRequest(aes, "ali", p),
    }
    if not negative_alignment:
        del requests["tecneg_ali"], requests["aesneg_ali"]
    return requests


def all_tuple_requests(rows: Sequence[dict[str, Any]], negative_alignment: bool = True) -> list[EmbeddingRequest]:
    return [request for row in rows for request in tuple_requests(row, negative_alignment).values()]


def tuple_embeddings(cache: EmbeddingCache, rows: Sequence[dict[str, Any]],
                     negative_alignment: bool = True) -> TupleEmbeddings:
    names = list(tuple_requests(rows[0], negative_alignment).keys())
    per_row = [tuple_requests(row, negative_alignment) for row in rows]
    tensors = {name: cache.get([requests[name] for requests in per_row]) for name in names}
    return TupleEmbeddings(**tensors)


def sft_tuples(rows: Sequence[dict[str, Any]], load_image: Callable[[str], Image.Image]) -> list[dict[str, Any]]:
    """Tuples with decoded images, in the form `pseudo_label_examples` takes, with each visual
    negative's method and severity and the positive as their series (the severity-ranking term)."""
    return [
        {"positive": load_image(r["positive_sha256"]), "tec_negative": load_image(r["tec_sha256"]),
         "aes_negative": load_image(r["aes_sha256"]), "prompt": r["prompt"], "mismatched_prompt": r["mismatched_prompt"],
         "ali_negative": load_image(r["ali_sha256"]) if r.get("ali_sha256") not in (None, r["positive_sha256"]) else None,
         "series": r["positive_sha256"],
         **{f"{a}_{k}": r.get(f"{a}_{k}") for a in ("tec", "aes") for k in ("method", "severity")}}
        for r in rows
    ]
