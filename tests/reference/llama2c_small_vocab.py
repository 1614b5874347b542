#!/usr/bin/python3
"""A llama2.c tokenizer.bin with a custom 105-token vocabulary, and the ids SentencePiece gives.

Usage: llama2c_small_vocab.py OUT_TOKENIZER.bin TEXTS.json OUT.json
  Trains a SentencePiece BPE model of 105 pieces (no byte fallback, so no <0xNN> pieces) on a
  small fixed corpus, writes it the way llama2.c's tokenizer.py exports a model (int32
  max_token_length, then per piece float32 score, int32 length, bytes; '▁' written as ' ', BOS
  and EOS as '\\n<s>\\n' and '\\n</s>\\n'), and writes per text [1] + sp.encode(text): what
  llama2.c's encode(bos=1, eos=0) gives for text made of the vocabulary's characters.
"""
import io
import json
import struct
import sys

import sentencepiece as spm

CORPUS = ("the cat sat on the mat. the dog ate the bone. a cat and a dog met at the gate.\n" * 20 +
          "once upon a time there was a little girl who liked to read books about cats and dogs.\n" * 20)


def main():
    out_bin, texts_file, out_file = sys.argv[1:4]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()), model_writer=model, vocab_size=105, model_type="bpe",
        character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
        byte_fallback=False, add_dummy_prefix=True, num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    tokens, scores = [], []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if i == sp.bos_id():
            piece = "\n<s>\n"
        elif i == sp.eos_id():
            piece = "\n</s>\n"
        tokens.append(piece.replace("\u2581", " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    with open(out_bin, "wb") as f:
        f.write(struct.pack("<i", max(len(t) for t in tokens)))
        for t, s in zip(tokens, scores):
            f.write(struct.pack("<fi", s, len(t)))
            f.write(t)
    texts = json.load(open(texts_file, encoding="utf-8"))
    json.dump({"vocab_size": sp.get_piece_size(), "bos_id": sp.bos_id(),
               "ids": [[sp.bos_id()] + sp.encode(t) for t in texts]}, open(out_file, "w"))


if __name__ == "__main__":
    main()
