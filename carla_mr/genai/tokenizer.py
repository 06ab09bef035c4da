"""The real CLIP BPE tokenizer, built offline from the vocabulary ``openai-clip`` ships.

``openai-clip`` installs ``clip/bpe_simple_vocab_16e6.txt.gz`` (the 49,152-merge BPE of
OpenAI's CLIP, the one Stable Diffusion 1.x uses). We locate it with
``importlib.util.find_spec`` *without importing* ``clip`` (its ``__init__`` imports torchvision)
and build a ``transformers.CLIPTokenizer`` from ``vocab=`` and ``merges=`` (with transformers 5,
``vocab_file=``/``merges_file=`` keywords are silently ignored and give wrong ids).
Ids: 49406 = ``<|startoftext|>``, 49407 = ``<|endoftext|>`` (also the pad token).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from carla_mr.errors import InputError, require

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2
BOS_ID = 49406
EOS_ID = 49407
VOCAB_SIZE = 49408


def clip_bpe_path() -> Path:
    """Path of the CLIP BPE file inside the installed ``openai-clip`` (or ``open_clip``) package."""
    for pkg in ("clip", "open_clip"):
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for loc in spec.submodule_search_locations:
            p = Path(loc) / BPE_NAME
            if p.is_file():
                return p
    raise InputError(f"the CLIP BPE vocabulary ({BPE_NAME}) was not found; "
                     "install it with: pip install 'carla-mr[genai]' (package openai-clip)", field="tokenizer")


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@lru_cache(maxsize=2)
def clip_vocab_and_merges(path: str | None = None) -> tuple[dict[str, int], list[str]]:
    """(vocab token -> id, merges "a b") exactly as OpenAI's CLIP builds them."""
    p = Path(path) if path else clip_bpe_path()
    lines = gzip.open(p).read().decode("utf-8").split("\n")
    merges = lines[1:N_MERGES + 1]
    byte_syms = list(_bytes_to_unicode().values())
    vocab = byte_syms + [v + "</w>" for v in byte_syms]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def build_clip_tokenizer(model_max_length: int = 77, path: str | os.PathLike | None = None):
    """A ``transformers.CLIPTokenizer`` with the real CLIP vocabulary (no network)."""
    transformers = require("transformers", extra="genai", feature="the CLIP tokenizer")
    vocab, merges = clip_vocab_and_merges(str(path) if path else None)
    tok = transformers.CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split()) for m in merges], model_max_length=int(model_max_length))
    return tok
