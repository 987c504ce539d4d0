"""Tokenizers behind one interface: SentencePiece BPE (trained here) and WordPiece (imported).

Both kinds give ids without special tokens from `encode`, and `build_inputs` adds BERT's
`[CLS] A [SEP] (B [SEP])` framing with segment ids, so the model code never needs to know
which kind it was given. Special tokens are never produced from literal text: a "[MASK]"
typed in a document stays ordinary characters, so data cannot inject control tokens.

A tokenizer directory holds `tokenizer_config.json` plus either `spm.model` (SentencePiece)
or, for WordPiece, `tokenizer.json` and/or `vocab.txt` (the file layouts of HF BERT
checkpoints: transformers 5 saves tokenizer.json alone, older ones vocab.txt).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from typing import Callable, Iterable, Sequence

import numpy as np
from tokenizers import (AddedToken, Tokenizer as HFTokenizer, decoders, normalizers,
                        pre_tokenizers, processors)
from tokenizers.models import WordPiece

from flaxbert.errors import FlaxbertError
from flaxbert.jsonfile import read_json, write_json

log = logging.getLogger("flaxbert.data")

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
CONFIG_FILE = "tokenizer_config.json"
SPM_FILE = "spm.model"
VOCAB_FILE = "vocab.txt"
TOKENIZER_JSON = "tokenizer.json"
SPECIALS_FILE = "special_tokens_map.json"


class Tokenizer:
  """The interface every tokenizer kind implements."""

  kind: str
  lowercase: bool

  # --- implemented by each kind -------------------------------------------------------------
  @property
  def vocab_size(self) -> int:
    raise NotImplementedError

  def token_to_id(self, token: str) -> int | None:
    raise NotImplementedError

  def id_to_token(self, index: int) -> str:
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Ids for each text, without special tokens."""
    raise NotImplementedError

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and each token's (start, end) character span in `text`, leading space excluded
    (extractive QA maps predicted tokens back to text with these)."""
    raise NotImplementedError

  def decode(self, ids: Iterable[int]) -> str:
    raise NotImplementedError

  def is_word_start(self, ids: Sequence[int]) -> list[bool]:
    """True where a token begins a new word (for whole-word masking)."""
    raise NotImplementedError

  def save(self, directory: str) -> None:
    raise NotImplementedError

  # --- shared --------------------------------------------------------------------------------
  def _special_id(self, token: str) -> int:
    index = self.token_to_id(token)
    if index is None:
      raise FlaxbertError(f"{getattr(self, 'source', 'tokenizer')}: vocabulary has no {token} "
                          "token")
    return index

  def _init_special_ids(self, names: dict[str, str] | None = None) -> None:
    """Ids of the pad/unk/cls/sep/mask tokens, by the texts `names` gives them ([PAD]...)."""
    names = names or {}
    self.pad_id = self._special_id(names.get("pad_token", PAD))
    self.unk_id = self._special_id(names.get("unk_token", UNK))
    self.cls_id = self._special_id(names.get("cls_token", CLS))
    self.sep_id = self._special_id(names.get("sep_token", SEP))
    self.mask_id = self._special_id(names.get("mask_token", MASK))
    self.special_ids = frozenset(
        (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))

  def encode(self, text: str) -> list[int]:
    return self.encode_batch([text])[0]

  def tokenize(self, text: str) -> list[str]:
    return [self.id_to_token(i) for i in self.encode(text)]

  def build_inputs(self, a_ids: Sequence[int], b_ids: Sequence[int] | None = None,
                   max_length: int | None = None) -> tuple[list[int], list[int]]:
    """`[CLS] A [SEP] (B [SEP])` and segment ids, truncating the longer side first.

    Truncation removes one token at a time from the end of the currently longer segment,
    which is what BERT's run_classifier and HF's `longest_first` strategy do.
    """
    a, b = list(a_ids), (list(b_ids) if b_ids is not None else None)
    if max_length is not None:
      budget = max_length - (3 if b is not None else 2)
      if budget < (2 if b is not None else 1):
        raise FlaxbertError(f"max_length {max_length} leaves no room for text")
      while len(a) + (len(b) if b is not None else 0) > budget:
        if b is not None and len(b) > len(a):
          b.pop()
        else:
          a.pop()
    ids = [self.cls_id] + a + [self.sep_id]
    segments = [0] * len(ids)
    if b is not None:
      ids += b + [self.sep_id]
      segments += [1] * (len(b) + 1)
    return ids, segments

  def encode_inputs(self, texts: Sequence[tuple[str, str | None]], max_length: int,
                    on_cut: Callable[[int], None] | None = None) -> list[dict[str, np.ndarray]]:
    """BERT inputs of (text_a, text_b or None) rows: unpadded int32 `input_ids`, `segment_ids`
    and `input_mask` per row, framed and truncated by `build_inputs`.

    The one path from texts to model inputs: the fine-tuning data, `predict`, `embed` and
    serving all call it, so a text gets the same ids everywhere. `on_cut(i)` is called for
    each row `i` that had to be cut to `max_length`.
    """
    firsts = self.encode_batch([a for a, _ in texts])
    paired = [i for i, (_, b) in enumerate(texts) if b is not None]
    seconds = dict(zip(paired, self.encode_batch([texts[i][1] for i in paired]))) \
        if paired else {}
    rows = []
    for i, a in enumerate(firsts):
      b = seconds.get(i)
      ids, segments = self.build_inputs(a, b, max_length)
      if on_cut is not None and len(ids) < len(a) + (len(b) + 3 if b is not None else 2):
        on_cut(i)
      rows.append({"input_ids": np.asarray(ids, np.int32),
                   "segment_ids": np.asarray(segments, np.int32),
                   "input_mask": np.ones(len(ids), np.int32)})
    return rows


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model whose [PAD] [UNK] [CLS] [SEP] [MASK] pieces are ids 0..4."""

  kind = "sentencepiece"

  def __init__(self, model_file: str, lowercase: bool = False):
    import sentencepiece as spm
    if not os.path.isfile(model_file):
      raise FlaxbertError(f"{model_file}: no such SentencePiece model")
    try:
      self._sp = spm.SentencePieceProcessor(model_file=model_file)
    except (OSError, RuntimeError) as e:
      raise FlaxbertError(f"{model_file}: not a SentencePiece model ({e})") from None
    self._model_file = model_file
    self.lowercase = lowercase
    self._init_special_ids()

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def token_to_id(self, token):
    index = self._sp.piece_to_id(token)
    # piece_to_id maps unknown pieces to the unk id; only [UNK] itself may map there.
    return None if index == self._sp.unk_id() and token != UNK else index

  def id_to_token(self, index):
    return self._sp.id_to_piece(int(index))

  def encode_batch(self, texts):
    # SentencePiece never emits control symbols for text, so "[MASK]" in text stays literal.
    return self._sp.encode(list(texts), out_type=int)

  def encode_with_offsets(self, text):
    proto = self._sp.encode(text, out_type="proto")
    # SentencePiece reports UTF-8 byte offsets; the pieces of one byte-fallback character
    # all but the last have empty spans, and "▁" pieces include the space before a word.
    byte_to_char = [0] * (len(text.encode("utf-8")) + 1)
    position = 0
    for index, char in enumerate(text):
      width = len(char.encode("utf-8"))
      byte_to_char[position:position + width] = [index] * width
      position += width
    byte_to_char[position] = len(text)
    ids, spans, pending = [], [], 0
    for piece in proto.pieces:
      ids.append(piece.id)
      if piece.begin == piece.end:
        pending += 1
        continue
      start, end = byte_to_char[piece.begin], byte_to_char[piece.end]
      while start < end and text[start].isspace():
        start += 1
      spans += [(start, end)] * (pending + 1)
      pending = 0
    spans += [(len(text), len(text))] * pending
    return ids, spans

  def decode(self, ids):
    return self._sp.decode([int(i) for i in ids if int(i) not in self.special_ids])

  def is_word_start(self, ids):
    return [self._sp.id_to_piece(int(i)).startswith("\u2581") or int(i) in self.special_ids
            for i in ids]

  def save(self, directory):
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, SPM_FILE)
    if os.path.abspath(target) != os.path.abspath(self._model_file):
      shutil.copyfile(self._model_file, target)
    write_json(os.path.join(directory, CONFIG_FILE),
                {"kind": self.kind, "lowercase": self.lowercase})


class WordPieceTokenizer(Tokenizer):
  """BERT's WordPiece, run by the `tokenizers` library, from a `vocab.txt` or a `tokenizer.json`.

  From `vocab.txt` the pipeline is exactly HF's BertTokenizer(Fast): BertNormalizer (clean
  text, CJK spacing, accent stripping that follows lowercasing unless set), BertPreTokenizer,
  WordPiece with `##` continuations and 100-character words. A `tokenizer.json` is read as
  transformers reads it (see `from_tokenizer_json`). Special tokens present in the file are
  encoded as plain text (`encode_special_tokens`), as the module docstring requires.
  """

  kind = "wordpiece"

  def __init__(self, vocab_file: str, lowercase: bool = True, strip_accents: bool | None = None,
               tokenize_chinese_chars: bool = True, special_tokens: dict | None = None):
    if not os.path.isfile(vocab_file):
      raise FlaxbertError(f"{vocab_file}: no such vocabulary file")
    specials = {**DEFAULT_SPECIALS, **(special_tokens or {})}
    vocab = _read_vocab(vocab_file)
    if specials["unk_token"] not in vocab:
      raise FlaxbertError(f"{vocab_file}: vocabulary has no {specials['unk_token']} token")
    tok = _bert_pipeline(vocab, specials["unk_token"], lowercase, strip_accents,
                         tokenize_chinese_chars)
    # The specials are added tokens, as transformers has them: ids from the vocabulary.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in specials.values() if t in vocab])
    self._setup(tok, specials, vocab_file, vocab_file)
    self.model_max_length = None

  @classmethod
  def from_tokenizer_json(cls, path: str, config: dict) -> "WordPieceTokenizer":
    """A `tokenizer.json` with the settings of `config` (tokenizer_config.json merged with
    special_tokens_map.json), giving the ids transformers gives.

    When `config` names BERT's tokenizer class, transformers (5.x, and 4.x's
    BertTokenizerFast for the normaliser) rebuilds the BERT pipeline from the config's
    do_lower_case / strip_accents / tokenize_chinese_chars and takes only the vocabulary and
    added tokens from the file; so do we. Otherwise the file's normaliser, pre-tokenizer and
    model are used as they are.
    """
    specials = {**DEFAULT_SPECIALS, **_special_names(config)}
    tok = _read_tokenizer_json(path)
    if not isinstance(tok.model, WordPiece):
      raise FlaxbertError(f"{path}: a {type(tok.model).__name__} tokenizer; flaxbert reads "
                          "WordPiece tokenizer.json files (BERT's)")
    vocab = tok.get_vocab(with_added_tokens=False)
    if not vocab:
      raise FlaxbertError(f"{path}: empty vocabulary")
    if config.get("tokenizer_class") in BERT_TOKENIZER_CLASSES:
      added = list(tok.get_added_tokens_decoder().values())
      tok = _bert_pipeline(vocab, specials["unk_token"],
                           bool(config.get("do_lower_case", True)), config.get("strip_accents"),
                           bool(config.get("tokenize_chinese_chars", True)))
      tok.add_tokens(added)
    # A saved tokenizer may pad or truncate every encoding (all-MiniLM-L6-v2's pads to 128);
    # flaxbert frames, cuts and pads batches itself.
    tok.no_padding()
    tok.no_truncation()
    self = cls.__new__(cls)
    self._setup(tok, specials, None, path)
    length = config.get("model_max_length")
    # transformers writes a huge sentinel when the length is unknown.
    self.model_max_length = length if isinstance(length, int) and 0 < length < 1 << 31 else None
    return self

  def _setup(self, tok, specials: dict, vocab_file: str | None, source: str) -> None:
    tok.encode_special_tokens = True   # "[MASK]" typed in text stays "[", "mask", "]"
    self.source = source   # the file errors name
    self._tok = tok
    self._vocab_file = vocab_file
    self.special_tokens = specials
    self._inverse = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    self._prefix = tok.model.continuing_subword_prefix
    added = set(tok.get_added_tokens_decoder())
    self._continues = np.asarray(
        [i in self._inverse and i not in added and self._inverse[i].startswith(self._prefix)
         for i in range(max(self._inverse) + 1)])
    normalizer = json.loads(tok.normalizer.__getstate__()) if tok.normalizer else {}
    pre_tokenizer = json.loads(tok.pre_tokenizer.__getstate__()) if tok.pre_tokenizer else {}
    # BERT's own pipeline (what BertTokenizer rebuilds from tokenizer_config.json), or another
    # one that only the file itself describes.
    self.bert_pipeline = (normalizer.get("type") == "BertNormalizer"
                          and pre_tokenizer.get("type") == "BertPreTokenizer"
                          and self._prefix == "##"
                          and tok.model.max_input_chars_per_word == 100)
    self.lowercase = bool(normalizer.get("lowercase", False))
    self.strip_accents = normalizer.get("strip_accents")
    self.tokenize_chinese_chars = bool(normalizer.get("handle_chinese_chars", False))
    self._init_special_ids(specials)

  @property
  def vocab_size(self) -> int:
    return len(self._continues)

  def token_to_id(self, token):
    return self._tok.token_to_id(token)

  def id_to_token(self, index):
    return self._inverse[int(index)]

  def encode_batch(self, texts):
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def encode_with_offsets(self, text):
    encoding = self._tok.encode(text, add_special_tokens=False)
    return encoding.ids, [tuple(span) for span in encoding.offsets]

  def decode(self, ids):
    return self._tok.decode([int(i) for i in ids if int(i) not in self.special_ids])

  def is_word_start(self, ids):
    return [not self._continues[int(i)] for i in ids]

  def save(self, directory):
    """tokenizer.json, vocab.txt and a tokenizer_config.json that transformers 4.x and 5.x
    read as this tokenizer: BertTokenizer settings for BERT's pipeline, else
    PreTrainedTokenizerFast, which takes tokenizer.json as it is."""
    os.makedirs(directory, exist_ok=True)
    tok = HFTokenizer.from_str(self._tok.to_str())
    tok.encode_special_tokens = False   # transformers sets its own (split_special_tokens)
    if tok.post_processor is None:      # BERT's framing, for whoever adds special tokens
      cls, sep = self.special_tokens["cls_token"], self.special_tokens["sep_token"]
      tok.post_processor = processors.TemplateProcessing(
          single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
          special_tokens=[(cls, self.cls_id), (sep, self.sep_id)])
    tok.save(os.path.join(directory, TOKENIZER_JSON))
    target = os.path.join(directory, VOCAB_FILE)
    if self._vocab_file is not None:
      if os.path.abspath(target) != os.path.abspath(self._vocab_file):
        shutil.copyfile(self._vocab_file, target)
    elif len(self._inverse) == self.vocab_size:   # ids 0..n-1, one token each
      with open(target, "w", encoding="utf-8") as f:
        f.writelines(self._inverse[i] + "\n" for i in range(self.vocab_size))
    else:
      log.warning("tokenizer: ids have gaps, so no vocab.txt is written (tokenizer.json holds "
                  "the vocabulary)")
    config = {"kind": self.kind, **self.special_tokens}
    if self.model_max_length is not None:
      config["model_max_length"] = self.model_max_length
    if self.bert_pipeline:
      # HF's keys, so the directory also loads as a transformers BertTokenizer (4.x and 5.x).
      config.update(tokenizer_class="BertTokenizer", do_lower_case=self.lowercase,
                    strip_accents=self.strip_accents,
                    tokenize_chinese_chars=self.tokenize_chinese_chars)
    else:
      # BERT's inputs, which the generic class gives only when told.
      config.update(tokenizer_class="PreTrainedTokenizerFast",
                    model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    write_json(os.path.join(directory, CONFIG_FILE), config)


BERT_TOKENIZER_CLASSES = ("BertTokenizer", "BertTokenizerFast")
DEFAULT_SPECIALS = {"pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP,
                    "mask_token": MASK}


def _bert_pipeline(vocab: dict[str, int], unk: str, lowercase: bool, strip_accents: bool | None,
                   tokenize_chinese_chars: bool) -> HFTokenizer:
  """BertTokenizer's pipeline, as transformers builds it."""
  tok = HFTokenizer(WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
      strip_accents=strip_accents, lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  return tok


def _read_tokenizer_json(path: str) -> HFTokenizer:
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise FlaxbertError(f"{path}: unreadable ({e})") from None
  try:
    return HFTokenizer.from_str(text)
  except Exception as e:  # the library raises a bare Exception for every parse error
    raise FlaxbertError(f"{path}: not a tokenizers tokenizer.json "
                        f"({str(e).strip().splitlines()[0] if str(e).strip() else e!r})") from None


def _special_names(config: dict) -> dict[str, str]:
  """The pad/unk/cls/sep/mask token texts a tokenizer config names (strings, or AddedToken
  dicts in older files)."""
  names = {}
  for key in DEFAULT_SPECIALS:
    value = config.get(key)
    if isinstance(value, dict):
      value = value.get("content")
    if isinstance(value, str) and value:
      names[key] = value
  return names


def load_tokenizer(directory: str) -> Tokenizer:
  """Loads a tokenizer directory: ours, or an HF BERT checkpoint's.

  `spm.model` is a SentencePiece tokenizer. Otherwise `tokenizer.json` is preferred over
  `vocab.txt`: transformers (4.x fast and 5.x) takes the vocabulary and added tokens from it
  when both are there, and 5.x saves no vocab.txt at all.
  """
  if not os.path.isdir(directory):
    raise FlaxbertError(f"{directory}: no such tokenizer directory")
  config_path = os.path.join(directory, CONFIG_FILE)
  config = read_json(config_path) if os.path.isfile(config_path) else {}
  if os.path.isfile(os.path.join(directory, SPM_FILE)):
    return SentencePieceTokenizer(os.path.join(directory, SPM_FILE),
                                  lowercase=bool(config.get("lowercase", False)))
  specials_path = os.path.join(directory, SPECIALS_FILE)
  if os.path.isfile(specials_path):
    # transformers lets tokenizer_config.json's names win over special_tokens_map.json's.
    config = {**read_json(specials_path), **config}
  if os.path.isfile(os.path.join(directory, TOKENIZER_JSON)):
    return WordPieceTokenizer.from_tokenizer_json(os.path.join(directory, TOKENIZER_JSON),
                                                  config)
  if os.path.isfile(os.path.join(directory, VOCAB_FILE)):
    return WordPieceTokenizer(
        os.path.join(directory, VOCAB_FILE),
        lowercase=bool(config.get("do_lower_case", True)),
        strip_accents=config.get("strip_accents"),
        tokenize_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        special_tokens=_special_names(config))
  raise FlaxbertError(f"{directory}: no {SPM_FILE}, {TOKENIZER_JSON} or {VOCAB_FILE}: not a "
                      "tokenizer directory")


def train_sentencepiece(inputs: Sequence[str], vocab_size: int, output: str, *,
                        lowercase: bool = False, max_sentences: int = 2_000_000,
                        seed: int = 0) -> SentencePieceTokenizer:
  """Trains a BPE SentencePiece model (byte fallback on) on text files; returns it loaded.

  At most `max_sentences` non-empty lines are used, drawn by reservoir sampling while
  streaming the files, so a corpus larger than memory still trains in bounded memory.
  """
  import sentencepiece as spm
  if vocab_size < len(SPECIAL_TOKENS) + 256 + 1:
    raise FlaxbertError(f"vocab size {vocab_size} is too small: byte fallback alone needs "
                        f"{len(SPECIAL_TOKENS) + 256 + 1}")
  sample = _reservoir_sample_lines(inputs, max_sentences, seed)
  if not sample:
    raise FlaxbertError(f"no text found in {', '.join(inputs)}")
  os.makedirs(output, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    text_file = os.path.join(tmp, "sample.txt")
    with open(text_file, "w", encoding="utf-8") as f:
      f.writelines(line + "\n" for line in sample)
    prefix = os.path.join(tmp, "spm")
    try:
      spm.SentencePieceTrainer.train(
          input=text_file, model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
          byte_fallback=True, character_coverage=0.9995,
          pad_id=0, pad_piece=PAD, unk_id=1, unk_piece=UNK, bos_id=-1, eos_id=-1,
          control_symbols=[CLS, SEP, MASK],
          normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
          max_sentence_length=MAX_SENTENCE_BYTES, shuffle_input_sentence=False,
          num_threads=os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
      raise FlaxbertError(f"SentencePiece training failed: {str(e).strip().splitlines()[-1]}") \
          from None
    shutil.copyfile(prefix + ".model", os.path.join(output, SPM_FILE))
  write_json(os.path.join(output, CONFIG_FILE),
              {"kind": SentencePieceTokenizer.kind, "lowercase": lowercase})
  return SentencePieceTokenizer(os.path.join(output, SPM_FILE), lowercase=lowercase)


MAX_SENTENCE_BYTES = 1 << 16   # SentencePiece's max_sentence_length: longer lines are skipped


def _reservoir_sample_lines(paths: Sequence[str], k: int, seed: int) -> list[str]:
  """A uniform sample of at most `k` non-empty lines, streaming the files once.

  Non-UTF-8 bytes are an error naming file and line; lines longer than SentencePiece accepts
  are skipped and counted in one log line (SentencePiece itself would drop them silently).
  """
  rng = random.Random(seed)
  sample: list[str] = []
  seen = 0
  too_long, first_too_long = 0, None
  for path in paths:
    if not os.path.isfile(path):
      raise FlaxbertError(f"{path}: no such file")
    with open(path, "rb") as f:
      for number, raw in enumerate(f, start=1):
        try:
          line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
          raise FlaxbertError(f"{path}:{number}: not UTF-8 (byte {raw[e.start]:#04x} at column "
                              f"{e.start + 1})") from None
        if not line:
          continue
        if len(raw) > MAX_SENTENCE_BYTES:
          too_long += 1
          first_too_long = first_too_long or f"{path}:{number}"
          continue
        seen += 1
        if len(sample) < k:
          sample.append(line)
        else:
          j = rng.randrange(seen)
          if j < k:
            sample[j] = line
  if too_long:
    log.warning("tokenizer training: %d lines skipped: over %d bytes (first at %s)", too_long,
                MAX_SENTENCE_BYTES, first_too_long)
  return sample


def _read_vocab(path: str) -> dict[str, int]:
  vocab: dict[str, int] = {}
  with open(path, encoding="utf-8") as f:
    for index, line in enumerate(f):
      token = line.rstrip("\n")
      if token in vocab:
        raise FlaxbertError(f"{path}:{index + 1}: duplicate token {token!r}")
      vocab[token] = index
  if not vocab:
    raise FlaxbertError(f"{path}: empty vocabulary")
  return vocab

