#!/usr/bin/env python3
"""Writes the generated seeds of fuzz/corpus (the hand-written ones are files there already):
small zip archives in the layouts read_zip_directory meets (torch.save's, zipfile's, a zip64 one
made field by field), llama2.c tokenizer.bin files, a tokenizer.json with the full byte
vocabulary, and for the weight readers: safetensors files, index files with their shards,
torch.save state dicts and checkpoints, config.json files, llama2.c checkpoints and architecture
specs, and TorchScript archives as their records (parts). Run with Debian's /usr/bin/python3
(torch.save needs python3-torch; skipped without). With HOOKLENS_OPS=build/lib/libhooklens_ops.so
the TorchScript seeds include models that call torch.ops.hooklens.capture themselves.
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


# ---- weights ---------------------------------------------------------------------------------

ST_DTYPES = {"F32": ("<f", 4), "F16": ("<e", 2), "I64": ("<q", 8), "I32": ("<i", 4), "U8": ("<B", 1),
             "BOOL": ("<?", 1), "F64": ("<d", 8), "I16": ("<h", 2), "I8": ("<b", 1)}


def safetensors(tensors, metadata=None):
    """tensors: name -> (dtype, shape, values) with values a flat list."""
    header, blobs, offset = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, values) in tensors.items():
        fmt, _ = ST_DTYPES[dtype]
        data = b"".join(struct.pack(fmt, v) for v in values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs += data
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + blobs


def safetensors_seeds():
    out("safetensors", "f32.safetensors", safetensors({"w": ("F32", [2, 3], [0.5 * i for i in range(6)])}))
    out("safetensors", "mixed.safetensors", safetensors(
        {"a": ("F16", [3], [1.0, -2.0, 0.25]), "ids": ("I64", [2], [-5, 2 ** 40]), "mask": ("BOOL", [2, 1], [True, False]),
         "b": ("U8", [4], [0, 1, 254, 255]), "d": ("F64", [], [3.5]), "s": ("I16", [1], [-3]), "c": ("I8", [2], [1, -1]),
         "i": ("I32", [1, 1, 1], [7]), "empty": ("F32", [0, 4], [])}, metadata={"format": "pt"}))
    out("safetensors", "metadata_only.safetensors", safetensors({}, metadata={"format": "pt", "note": "none"}))
    # bf16 by hand: the top halves of float32 values
    data = b"".join(struct.pack("<f", v)[2:] for v in (1.0, -0.5, 3.0, 0.0))
    text = json.dumps({"bf": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, len(data)]}}).encode()
    out("safetensors", "bf16.safetensors", struct.pack("<Q", len(text)) + text + data)


def weight_index_seeds():
    a = safetensors({"x": ("F32", [2], [1.0, 2.0])})
    b = safetensors({"y": ("F32", [1, 2], [3.0, 4.0]), "z": ("I64", [1], [9])})
    index = json.dumps({"metadata": {"total_size": 24}, "weight_map": {"x": "a.safetensors", "y": "b.safetensors",
                                                                         "z": "b.safetensors"}})
    out("weight_index", "two_shards.txt", index.encode() + b"\n==> a.safetensors <==\n" + a + b"\n==> b.safetensors <==\n" + b)
    out("weight_index", "subdir.txt", json.dumps({"weight_map": {"x": "sub/../a.safetensors"}}).encode() +
        b"\n==> a.safetensors <==\n" + a)
    out("weight_index", "direct.txt", b"{}\n==> model.safetensors <==\n" + a)
    try:
        import torch
    except ImportError:
        return
    buf = io.BytesIO()
    torch.save({"w": torch.arange(3, dtype=torch.float32)}, buf)
    out("weight_index", "bin_shard.txt", json.dumps({"weight_map": {"w": "p.bin", "x": "a.safetensors"}}).encode() +
        b"\n==> p.bin <==\n" + buf.getvalue() + b"\n==> a.safetensors <==\n" + a)


def pytorch_bin_seeds():
    try:
        import collections
        import torch
    except ImportError:
        print("no torch: pytorch_bin seeds skipped")
        return
    torch.manual_seed(0)
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tied = torch.randn(2, 2)
    sd = collections.OrderedDict([("view", base[1:, ::2]), ("t", base.t()), ("wte", tied), ("lm_head", tied),
                                  ("h", torch.ones(2, dtype=torch.float16)), ("n", torch.tensor(3)),
                                  ("p", torch.nn.Parameter(torch.zeros(1)))])
    ckpt = {"model": {"w": torch.ones(2)}, "model_args": {"n_head": 2, "bias": True, "dropout": 0.0, "name": None},
            "iter_num": 5, "config": {"lr": [1e-3, 2e-3], "shared": "x"}}
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).state_dict()
    for name, obj, protocol in (("views_tied.pt", sd, 2), ("views_tied_p4.pt", sd, 4), ("checkpoint.pt", ckpt, 2),
                                ("module.pt", module, 2)):
        buf = io.BytesIO()
        torch.save(obj, buf, pickle_protocol=protocol)
        out("pytorch_bin", name, buf.getvalue())


def hf_config_seeds():
    configs = {
        "gpt2.json": {"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 32, "vocab_size": 100, "n_positions": 64,
                      "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
                      "bos_token_id": 50256, "eos_token_id": [50256, 2], "architectures": ["GPT2LMHeadModel"]},
        "llama.json": {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "intermediate_size": 128, "rope_theta": 500000.0,
                       "rope_scaling": {"type": "llama3", "factor": 8.0}, "max_position_embeddings": 128,
                       "eos_token_id": "x", "mask_token_id": 3, "tie_word_embeddings": False, "_comment": "x"},
        "neo.json": {"model_type": "gpt_neo", "attention_layers": ["global", "local"], "window_size": 256,
                     "attention_types": [[["global", "local"], 1]], "hidden_size": 32, "unknown_key": {"a": [1, 2]}},
    }
    for name, config in configs.items():
        out("hf_config", name, json.dumps(config, indent=1).encode())


def llama2c_checkpoint(version, shared=True, dim=8, hidden=16, layers=1, heads=2, kv_heads=1, vocab=6, seq_len=4,
                       freq=False):
    head = dim // heads
    kv_dim = kv_heads * head
    floats = lambda n, k: struct.pack("<%df" % n, *[((i * 7 + k) % 11 - 5) / 10 for i in range(n)])
    emb, rms_att, rms_ffn, rms_final = floats(vocab * dim, 1), floats(layers * dim, 2), floats(layers * dim, 3), floats(dim, 4)
    wq, wk, wv, wo = floats(layers * dim * dim, 5), floats(layers * dim * kv_dim, 6), floats(layers * dim * kv_dim, 7), floats(layers * dim * dim, 8)
    w1, w2, w3 = floats(layers * hidden * dim, 9), floats(layers * dim * hidden, 10), floats(layers * hidden * dim, 11)
    wcls = b"" if shared else floats(vocab * dim, 12)
    params = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab if shared or version else -vocab, seq_len)
    if version == 0:
        body = emb + rms_att + wq + wk + wv + wo + rms_ffn + w1 + w2 + w3 + rms_final
        if freq:
            body += floats(seq_len * head, 13)
        return params + body + wcls
    header = struct.pack("<Ii", 0x616B3432, 1) + params + bytes([1 if shared else 0])
    header += b"\0" * (256 - len(header))
    return header + rms_att + rms_ffn + rms_final + emb + wq + wk + wv + wo + w1 + w2 + w3 + wcls


def llama2c_checkpoint_seeds():
    out("llama2c_checkpoint", "legacy.bin", llama2c_checkpoint(0))
    out("llama2c_checkpoint", "legacy_unshared_freq.bin", llama2c_checkpoint(0, shared=False, freq=True))
    out("llama2c_checkpoint", "v1.bin", llama2c_checkpoint(1))
    out("llama2c_checkpoint", "v1_unshared_2layers.bin", llama2c_checkpoint(1, shared=False, layers=2, kv_heads=2))
    out("llama2c_checkpoint", "v2_header.bin", struct.pack("<Ii", 0x616B3432, 2) + b"\0" * 248)


def arch_spec_seeds():
    spec_dir = os.path.join(HERE, "..", "specs")
    nanogpt = json.load(open(os.path.join(spec_dir, "nanogpt.json")))
    nanogpt.pop("description")
    nanogpt["n_heads"] = 2
    seeds = {
        "extends.json": {"extends": "nanogpt", "n_heads": 2},
        "inline.json": nanogpt,
        "raschka.json": {"extends": "raschka-gpt", "n_heads": 2},
        "overrides.json": {"extends": "nanogpt", "n_heads": 2, "n_ctx": 4,
                           "norm": {"type": "rms", "eps": 1e-6}, "activation": {"function": "silu", "gated": False},
                           "positions": {"type": "rope_neox", "theta": 10000.0}, "tensors": {"pos_embed": None},
                           "ignore": ["transformer.wpe.weight", "transformer.h.*.attn.bias"],
                           "attention": {"mask": "bidirectional", "scale": 0.5},
                           "linear_layout": {"default": "in_out", "W_qkv": "out_in"}, "bos_id": 0, "eos_id": 1},
    }
    for name, spec in seeds.items():
        out("arch_spec", name, json.dumps(spec, indent=1).encode())
    base = dict(nanogpt)
    base.pop("n_heads")
    out("arch_spec", "extends_file.txt", json.dumps({"extends": "base.json", "n_heads": 2, "ignore": ["**.attn.bias"]}).encode() +
        b"\n==> base.json <==\n" + json.dumps(base).encode())


# ---- TorchScript archives --------------------------------------------------------------------

def torchscript_parts(module, with_debug=False):
    """The archive torch.jit.save writes, as parts: "==> RECORD <==" then the record's bytes, the
    archive's own folder name left out (the harness writes the records back with its own)."""
    import torch
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    parts = []
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        for name in z.namelist():
            record = name.split("/", 1)[1]
            if record.endswith(".debug_pkl") and not with_debug:
                continue  # optional for the loader, and most of the bytes
            parts.append(b"==> " + record.encode() + b" <==\n" + z.read(name))
    return b"\n".join(parts)


def torchscript_seeds():
    import sys
    import torch
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
    import make_torchscript as ts
    ops = os.environ.get("HOOKLENS_OPS")
    if ops:
        torch.ops.load_library(ops)
    torch.manual_seed(0)
    ids = torch.zeros(1, 3, dtype=torch.long)
    models = {
        "gpt": (ts.GPT(vocab=12, d=8, heads=2, n=2, ctx=8), False),
        "kl": (ts.KLModel(vocab=11, d=4, heads=2), False),
        "branchy": (ts.BranchyModel(vocab=10, d=4, heads=2), False),
        "nano": (ts.NanoGPT(vocab=9, d=8, heads=2, n=1, ctx=8), False),
    }
    for name, (model, trace) in models.items():
        model.eval()
        out("torchscript", name + ".txt", torchscript_parts(torch.jit.script(model), with_debug=name == "gpt"))
    gpt = models["gpt"][0]
    with torch.no_grad():
        out("torchscript", "gpt_traced.txt", torchscript_parts(torch.jit.trace(gpt, ids)))
    if ops:
        out("torchscript", "gpt_ops.txt", torchscript_parts(torch.jit.script(
            ts.GPT(attention=ts.OpsDotAttention, vocab=12, d=8, heads=2, n=2, ctx=8, ops=True).eval())))


if __name__ == "__main__":
    zips()
    llama2cs()
    byte_vocab_tokenizer()
    safetensors_seeds()
    weight_index_seeds()
    pytorch_bin_seeds()
    hf_config_seeds()
    llama2c_checkpoint_seeds()
    arch_spec_seeds()
    torchscript_seeds()
