"""What the critic asks of a tuple: its embedding requests, with or without z_ali of the negatives."""

from __future__ import annotations

import torch

from eliq_pipeline.core.storage import LocalArtifactStore
from eliq_pipeline.critic import data as critic_data
from eliq_pipeline.critic.embedding_cache import EmbeddingCache

ROW = {"positive_sha256": "p" * 64, "tec_sha256": "t" * 64, "aes_sha256": "a" * 64, "ali_sha256": None,
       "prompt": "style of someone", "mismatched_prompt": "style of someone else"}


def test_visual_negatives_can_share_the_positives_alignment_embedding(tmp_path) -> None:
    full = critic_data.tuple_requests(ROW)
    shared = critic_data.tuple_requests(ROW, negative_alignment=False)
    assert set(full) - set(shared) == {"tecneg_ali", "aesneg_ali"}
    assert all(full[name] == request for name, request in shared.items())
    assert len(critic_data.all_tuple_requests([ROW, ROW], negative_alignment=False)) == 2 * 8

    cache = EmbeddingCache(LocalArtifactStore(tmp_path), "ns")
    requests = list(dict.fromkeys(critic_data.all_tuple_requests([ROW], negative_alignment=False)))
    cache.add(requests, torch.arange(len(requests) * 4, dtype=torch.float32).view(len(requests), 4))
    tuples = critic_data.tuple_embeddings(cache, [ROW], negative_alignment=False)
    assert tuples.tecneg_ali is None and tuples.aesneg_ali is None
    assert torch.equal(tuples.tecneg_ali_or_pos, tuples.pos_ali)  # the QQT then sees I+'s z_ali on both sides
