"""Tokenizers of the toy diffusers pipelines, trained offline on the prompt-bank vocabulary."""

from __future__ import annotations

import functools
from typing import Any


def _tiny_words() -> list[str]:
    from eliq_pipeline.supervision.prompts import prompt_vocabulary

    return prompt_vocabulary()


def _train_bpe(words: list[list[str]]) -> list[tuple[str, str]]:
    """Deterministic BPE training: merge the most frequent pair (ties: smallest pair) until every
    word is one symbol. `tokenizers`' own trainer breaks ties in hash order, so two builds could
    disagree -- and the tiny pipelines must be reproducible for a seed."""
    from collections import Counter, defaultdict

    counts: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for index, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            counts[pair] += 1
            where[pair].add(index)
    merges: list[tuple[str, str]] = []
    while counts:
        best = min(counts.items(), key=lambda item: (-item[1], item[0]))[0]
        merges.append(best)
        for index in sorted(where.pop(best, ())):
            symbols = words[index]
            for pair in zip(symbols, symbols[1:]):
                counts[pair] -= 1
                if counts[pair] <= 0:
                    del counts[pair]
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            words[index] = merged
            for pair in zip(merged, merged[1:]):
                counts[pair] += 1
                where[pair].add(index)
    return merges


@functools.lru_cache(maxsize=1)
def _tiny_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer(model_max_length=77).backend_tokenizer  # CLIP's normaliser + pre-tokeniser
    pieces: set[str] = set()
    for word in _tiny_words():
        normalised = backend.normalizer.normalize_str(word)
        pieces.update(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalised))
    words = [list(piece[:-1]) + [piece[-1] + "</w>"] for piece in sorted(pieces)]
    merges = _train_bpe(words)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in alphabet + [a + "</w>" for a in alphabet] + [a + b for a, b in merges]:
        vocab.setdefault(symbol, len(vocab))
    return vocab, merges


def build_tiny_clip_tokenizer() -> Any:
    """Byte-level BPE CLIP tokenizer trained offline on the prompt-bank vocabulary.

    Every byte stays encodable, and bank words become single tokens so a 40-word prompt fits
    CLIP's 77-token window (a bytes-only vocab would not).
    """
    from transformers import CLIPTokenizer

    vocab, merges = _tiny_clip_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


def build_tiny_t5_tokenizer() -> Any:
    """Unigram T5 tokenizer: whole-word pieces for the prompt vocabulary, single characters as the
    fallback for anything else (uppercase, digits, punctuation)."""
    from transformers import T5TokenizerFast

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    for word in _tiny_words():
        for form in dict.fromkeys((word, word.capitalize())):  # T5 is case-sensitive: sentence starts too
            pieces.append(("▁" + form, -5.0))  # one word piece beats spelling it out (chars cost -8 each)
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-/()&%+"))
    known = {p for p, _ in pieces}
    pieces.extend((c, -8.0) for c in chars if c not in known)
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)
