"""The CLIP tokenizer built from the real BPE file gives CLIP's ids (checked independently)."""

from __future__ import annotations

import gzip
import re

import pytest

from carla_mr.genai.tokenizer import BOS_ID, EOS_ID, clip_bpe_path


def _reference_ids(text: str) -> list[int]:
    """An independent minimal CLIP BPE encoder (lower-case ASCII words only), straight from the file."""
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(l.split()) for l in lines]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_vocab = [chr(c) for c in cs]
    vocab = byte_vocab + [v + "</w>" for v in byte_vocab] + ["".join(m) for m in merges]
    enc = {t: i for i, t in enumerate(vocab)}
    ranks = {m: i for i, m in enumerate(merges)}
    ids = []
    for word in re.findall(r"[a-z]+|[0-9]", text.lower()):
        sym = list(word[:-1]) + [word[-1] + "</w>"]
        while len(sym) > 1:
            pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(sym, sym[1:]))]
            r, i = min(pairs)
            if r == 1 << 30:
                break
            sym = sym[:i] + [sym[i] + sym[i + 1]] + sym[i + 2:]
        ids += [enc[s] for s in sym]
    return ids


@pytest.mark.parametrize("prompt", ["a stop sign on a blue background", "a sks speed limit sign",
                                    "a mandatory arrow sign in a snowy road"])
def test_ids_match_clip_bpe(tokenizer, prompt):
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    assert ids[1:-1] == _reference_ids(prompt)


def test_known_ids(tokenizer):
    # CLIP's ids for "a photo of a cat" (as published with SD 1.x / openai/clip-vit-large-patch14)
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_padding_and_roundtrip(tokenizer, tmp_path):
    from transformers import CLIPTokenizer

    enc = tokenizer(["a stop sign"], padding="max_length", max_length=32, truncation=True)["input_ids"][0]
    assert len(enc) == 32 and enc[-1] == EOS_ID
    tokenizer.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again("a yield sign on a red background")["input_ids"] == tokenizer("a yield sign on a red background")["input_ids"]
