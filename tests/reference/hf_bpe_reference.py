#!/usr/bin/python3
"""An independent reference of a Hugging Face byte-level BPE tokenizer (tokenizer.json), written
from the `tokenizers` library's documented semantics, for hooklens' tests.

Usage: hf_bpe_reference.py MODEL_DIR TEXTS.json OUT.json
  TEXTS.json is a list of strings. OUT.json gets, per text, {"with": ids, "without": ids}: what
  tokenizer(text)["input_ids"] gives with and without add_special_tokens.

Different machinery from hooklens on purpose: the `regex` module (Unicode properties, like
Oniguruma) for Split and ByteLevel patterns, GPT2Tokenizer.bpe's pass-by-pass merge loop over
strings, a plain scan for added tokens (leftmost, then longest).
"""
import json
import os
import sys

import regex

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_symbols():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 256
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(extra)
            extra += 1
    return table


BYTE_SYMBOL = byte_symbols()


def to_symbols(text):
    return "".join(BYTE_SYMBOL[b] for b in text.encode("utf-8"))


def spans(pattern, piece, invert):
    """The matches and the gaps between them, covering the piece, as (start, end, is_match)."""
    out, prev = [], 0
    for m in pattern.finditer(piece):
        if m.start() != prev:
            out.append((prev, m.start(), False))
        out.append((m.start(), m.end(), True))
        prev = m.end()
    if prev != len(piece):
        out.append((prev, len(piece), False))
    return [(s, e, not is_match if invert else is_match) for s, e, is_match in out]


def split(pattern, piece, behavior, invert):
    parts = spans(pattern, piece, invert)
    kept = []
    if behavior == "Isolated":
        kept = [[s, e] for s, e, _ in parts]
    elif behavior == "Removed":
        kept = [[s, e] for s, e, m in parts if not m]
    elif behavior == "Contiguous":
        prev = False
        for s, e, m in parts:
            if kept and m == prev:
                kept[-1][1] = e
            else:
                kept.append([s, e])
            prev = m
    elif behavior == "MergedWithPrevious":
        prev = False
        for s, e, m in parts:
            if kept and m and not prev:
                kept[-1][1] = e
            else:
                kept.append([s, e])
            prev = m
    elif behavior == "MergedWithNext":
        prev = False
        for s, e, m in reversed(parts):
            if kept and m and not prev:
                kept[-1][0] = s
            else:
                kept.append([s, e])
            prev = m
        kept.reverse()
    else:
        raise ValueError(behavior)
    return [piece[s:e] for s, e in kept if e > s]


def pre_tokenizer_steps(spec):
    """A list of functions piece -> pieces, in order (Sequences flattened)."""
    kind = spec["type"]
    if kind == "Sequence":
        return [f for part in spec["pretokenizers"] for f in pre_tokenizer_steps(part)]
    if kind == "Split":
        pattern = spec["pattern"]
        text = pattern["Regex"] if "Regex" in pattern else regex.escape(pattern["String"])
        compiled = regex.compile(text)
        return [lambda p, c=compiled, b=spec["behavior"], i=spec.get("invert", False): split(c, p, b, i)]
    if kind == "Digits":
        digit = regex.compile(r"\p{N}")
        behavior = "Isolated" if spec.get("individual_digits", False) else "Contiguous"
        return [lambda p: split(digit, p, behavior, False)]
    if kind == "ByteLevel":
        gpt2 = regex.compile(GPT2_PATTERN)
        prefix, use_regex = spec.get("add_prefix_space", False), spec.get("use_regex", True)

        def byte_level(p):
            if prefix and not p.startswith(" "):
                p = " " + p
            return split(gpt2, p, "Isolated", False) if use_regex else [p]

        return [byte_level]
    raise ValueError(kind)


def template_ids(spec):
    """(before, after): the ids a post-processor puts around the text."""
    if spec is None or spec["type"] == "ByteLevel":
        return [], []
    if spec["type"] == "Sequence":
        before, after = [], []
        for part in spec["processors"]:
            b, a = template_ids(part)
            before, after = b + before, after + a
        return before, after
    assert spec["type"] == "TemplateProcessing"
    before, after, seen = [], [], False
    for item in spec["single"]:
        if "Sequence" in item:
            seen = True
        else:
            ids = spec["special_tokens"][item["SpecialToken"]["id"]]["ids"]
            (after if seen else before).extend(ids)
    return before, after


def bpe(symbols, ranks):
    word = list(symbols)
    while len(word) > 1:
        pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


class Tokenizer:
    def __init__(self, directory):
        spec = json.load(open(os.path.join(directory, "tokenizer.json"), encoding="utf-8"))
        model = spec["model"]
        self.vocab = model["vocab"]
        self.ranks = {}
        for rank, m in enumerate(model["merges"]):
            pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
            self.ranks[pair] = rank
        self.ignore_merges = model.get("ignore_merges", False)
        self.steps = pre_tokenizer_steps(spec["pre_tokenizer"])
        self.before, self.after = template_ids(spec.get("post_processor"))
        self.added = [(t["content"], t["id"], t.get("lstrip", False), t.get("rstrip", False))
                      for t in spec.get("added_tokens", [])]
        config = os.path.join(directory, "tokenizer_config.json")
        if os.path.exists(config):
            known = {a[0] for a in self.added}
            for key, t in json.load(open(config, encoding="utf-8")).get("added_tokens_decoder", {}).items():
                if t["content"] not in known:
                    self.added.append((t["content"], int(key), t.get("lstrip", False), t.get("rstrip", False)))

    def segments(self, text):
        """(text, None) for plain text and (content, id) for added tokens, in order."""
        out, start, i = [], 0, 0
        while i < len(text):
            found = [a for a in self.added if text.startswith(a[0], i)]
            if not found:
                i += 1
                continue
            content, token_id, lstrip, rstrip = max(found, key=lambda a: len(a[0]))
            begin, end = i, i + len(content)
            if lstrip:
                while begin > start and text[begin - 1].isspace():
                    begin -= 1
            if rstrip:
                while end < len(text) and text[end].isspace():
                    end += 1
            if begin > start:
                out.append((text[start:begin], None))
            out.append((text[begin:end], token_id))
            start = i = end
        if start < len(text):
            out.append((text[start:], None))
        return out

    def encode(self, text, add_special_tokens):
        ids = list(self.before) if add_special_tokens else []
        for segment, token_id in self.segments(text):
            if token_id is not None:
                ids.append(token_id)
                continue
            pieces = [segment]
            for step in self.steps:
                pieces = [q for p in pieces for q in step(p)]
            for piece in pieces:
                symbols = to_symbols(piece)
                if self.ignore_merges and symbols in self.vocab:
                    ids.append(self.vocab[symbols])
                    continue
                ids.extend(self.vocab[s] for s in bpe([c for c in symbols], self.ranks))
        if add_special_tokens:
            ids.extend(self.after)
        return ids


def main():
    directory, texts_file, out_file = sys.argv[1:4]
    tokenizer = Tokenizer(directory)
    texts = json.load(open(texts_file, encoding="utf-8"))
    result = [{"with": tokenizer.encode(t, True), "without": tokenizer.encode(t, False)} for t in texts]
    json.dump(result, open(out_file, "w"))


if __name__ == "__main__":
    main()
