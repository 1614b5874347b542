#!/usr/bin/env python3
"""Writes the generated seeds of fuzz/corpus (the hand-written ones are files there already):
small zip archives in the layouts read_zip_directory meets (torch.save's, zipfile's, a zip64 one
made field by field), llama2.c tokenizer.bin files, and a tokenizer.json with the full byte
vocabulary. Run with Debian's /usr/bin/python3 (torch.save needs python3-torch; skipped without).
The output is committed; rerun only to change the seeds."""
import io
import json
import os
import struct
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    os.makedirs(os.path.join(HERE, "corpus", target), exist_ok=True)
    with open(os.path.join(HERE, "corpus", target, name), "wb") as f:
        f.write(data)


# ---- zip archives ----------------------------------------------------------------------------

def with_zipfile(method, comment=b"", names=("archive/data.pkl", "archive/data/0")):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as z:
        for i, name in enumerate(names):
            z.writestr(name, bytes(range(i, i + 24)) * 2)
        z.comment = comment
    return buf.getvalue()


def zip64_by_hand():
    """One stored record whose central sizes and offset are saturated (0xFFFFFFFF) with the real
    values in a zip64 extra field, local headers padded as torch.save pads them, a zip64 end
    record and its locator before the classic end record."""
    name, data = b"archive/data/0", b"0123456789abcdef"
    crc = zlib.crc32(data)
    pad = b"FB" + struct.pack("<H", 12) + b"\0" * 12  # an extra field that aligns the data
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, len(data), len(data), len(name), len(pad))
    local += name + pad + data
    z64 = struct.pack("<HHQQQ", 1, 24, len(data), len(data), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                          len(name), len(z64), 0, 0, 0, 0, 0xFFFFFFFF) + name + z64
    cd_offset = len(local)
    end64_offset = cd_offset + len(central)
    end64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, len(central), cd_offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, end64_offset, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return local + central + end64 + locator + end


def zips():
    out("zip_directory", "stored.zip", with_zipfile(zipfile.ZIP_STORED))
    out("zip_directory", "deflated.zip", with_zipfile(zipfile.ZIP_DEFLATED))
    out("zip_directory", "comment.zip", with_zipfile(zipfile.ZIP_STORED, comment=b"PK\x05\x06 in a comment"))
    out("zip_directory", "zip64.zip", zip64_by_hand())
    out("zip_directory", "empty.zip", struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0, 0, 0, 0, 0))
    try:
        import torch
    except ImportError:
        print("no torch: torch.save seeds skipped")
        return
    for name, obj in (("torch_save.pt", {"w": torch.arange(4, dtype=torch.float32)}),
                      ("torch_save_tied.pt", {"a": torch.ones(2, 3, dtype=torch.float16), "b": torch.zeros(3)})):
        buf = io.BytesIO()
        torch.save(obj, buf)
        out("zip_directory", name, buf.getvalue())


# ---- llama2.c tokenizer.bin ------------------------------------------------------------------

def llama2c(text, pieces, max_len=None):
    """The fuzz input: 2-byte text length, the text, then the file."""
    t = text.encode()
    body = struct.pack("<i", max_len or max(len(p.encode()) for p, _ in pieces))
    for piece, score in pieces:
        b = piece.encode()
        body += struct.pack("<fi", score, len(b)) + b
    return struct.pack("<H", len(t)) + t + body


def llama2cs():
    base = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    words = [(" ", -1.0), ("a", -2.0), ("b", -3.0), ("c", -4.0), ("ab", -5.0), (" a", -6.0), ("abc", -7.0),
             (" ab", -8.0), ("\u00e9", -9.0), (" abc", -10.0)]
    out("tokenizer_llama2c", "words.bin", llama2c("abc ab cab", base + words))
    byte_pieces = [("<0x%02X>" % b, 0.0) for b in range(256)]
    out("tokenizer_llama2c", "byte_fallback.bin", llama2c("ab \u00e9\u65e5 \U0001F642!", base + byte_pieces + words))
    some_bytes = [("<0x%02X>" % b, 0.0) for b in (0x20, 0x61, 0xC3, 0xA9)]
    out("tokenizer_llama2c", "some_bytes.bin", llama2c("a \u00e9a", base + some_bytes + words[1:3]))
    out("tokenizer_llama2c", "two_tokens.bin", llama2c("", [("<unk>", 0.0), ("<s>", 0.0)]))
    out("tokenizer_llama2c", "ties_dups.bin", llama2c("aaaa", base + [(" ", 0.0), ("a", 0.0), ("aa", 1.0), ("aa", 2.0),
                                                                       ("aaaa", 1.0), (" a", 1.0)]))


# ---- tokenizer.json with every byte ----------------------------------------------------------

def byte_symbol(b):
    printable = lambda x: 33 <= x <= 126 or 161 <= x <= 172 or 174 <= x <= 255
    if printable(b):
        return chr(b)
    return chr(256 + sum(1 for x in range(b) if not printable(x)))


def byte_vocab_tokenizer():
    vocab = {byte_symbol(b): b for b in range(256)}
    sym = lambda s: "".join(byte_symbol(c) for c in s.encode())
    merges = []
    for left, right in (("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), (" ", "w"), (" w", "o"), ("o", "r")):
        merges.append(sym(left) + " " + sym(right))
        vocab[sym(left + right)] = len(vocab)
    added = [{"id": len(vocab), "content": "<|endoftext|>", "special": True},
             {"id": len(vocab) + 1, "content": "<mask>", "lstrip": True, "rstrip": False, "single_word": True}]
    tj = {"version": "1.0", "added_tokens": added, "normalizer": None,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True},
          "post_processor": {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}],
                             "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [len(vocab)]}}},
          "decoder": {"type": "ByteLevel"},
          "model": {"type": "BPE", "dropout": None, "vocab": vocab, "merges": merges}}
    text = json.dumps(tj, ensure_ascii=False) + "\n==> text <==\nhello world <mask> x<mask>\n\u00e9\U0001F642 123"
    out("tokenizer_hf", "byte_vocab.txt", text.encode())


if __name__ == "__main__":
    zips()
    llama2cs()
    byte_vocab_tokenizer()
