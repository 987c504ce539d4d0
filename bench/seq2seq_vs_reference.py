"""flaxbert's encoder-decoder against torch's nn.Transformer at equal budget.

Both models get the same sizes, the same SentencePiece tokenizer, the same batches in the same
order (flaxbert's seq2seq pipeline, length buckets as `finetune seq2seq` uses them), AdamW
(b2 0.98, eps 1e-9) with the same warmup + linear decay, the same global-norm clipping,
label smoothing, dropout (residual, FFN and attention), tied shared embeddings scaled by
sqrt(d), sinusoidal positions, and greedy / beam decoding with the same GNMT length penalty.
They train in turns of --eval-every steps in one process; at each point both are scored on the
dev pairs: teacher-forced loss and token accuracy, then sacrebleu BLEU and chrF of greedy
(and, at the end, beam) decoding. The copy-the-source baseline is scored on the same pairs.

  PYTHONPATH=. python bench/seq2seq_vs_reference.py --steps 300 --eval-every 100

Prints one JSON object (and writes it to --out). Not a test: minutes on 2 CPU cores.
--same-init starts flaxbert from the reference's initial weights; with --dropout 0 as well the
two runs differ only by the implementations.

Measured (2 shared CPU cores, load 2.3-3.5; tiny 2+2 x 64, 20,000 pairs of examples_train,
the first 500 of examples_dev, vocab 4,000, batch 64, lr 3e-3, 400 steps):
  default inits       dev loss flaxbert 6.097 / reference 6.014, chrF greedy 4.2 / 6.0
  --same-init         6.049 / 6.012, chrF 5.5 / 5.7
  --same-init, no dropout  5.924 / 5.922, accuracy 13.51% / 13.49%, chrF 5.8 / 5.8
  copy the source: chrF 13.3, BLEU 0.2. Both models are far below it at this budget.

With `finetune seq2seq`'s default model and recipe (2 CPU cores, load 2.0; all 42,696 pairs,
the first 500 dev pairs, vocab 2,000, `small` = 128 wide, 3+3 pre-LN, 1,651,200 parameters
each; batch 64, lr 3e-3, dropout 0.1, 1,500 steps, default inits; 921 s in all):

  PYTHONPATH=. python bench/seq2seq_vs_reference.py --train-pairs 42696 --vocab-size 2000 \
      --max-length 64 --hidden 128 --heads 4 --ffn 512 --layers 3 --pre-ln --lr 3e-3 \
      --steps 1500 --eval-every 750

  step 750   dev loss flaxbert 4.451 / reference 4.328, chrF greedy 8.9 / 8.0, BLEU 4.7 / 4.8
  step 1500  dev loss 4.068 / 3.999, accuracy 23.1% / 23.5%, greedy chrF 10.8 / 10.8,
             BLEU 5.5 / 5.5; beam 4 chrF 10.0 / 10.6, BLEU 5.5 / 6.1
  training   232 s / 248 s (10.2k / 9.5k real tokens/s: 1.07x), flaxbert's 279 s of bucket
             compiles apart
  copy the source: chrF 13.3, BLEU 0.2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch import nn as tnn

from flaxbert.data.pipeline import finetune_data
from flaxbert.data.tokenizer import load_tokenizer, train_sentencepiece
from flaxbert.models import encdec
from flaxbert.models.encdec import EncDecModel, sinusoidal_positions
from flaxbert.recipes.seq2seq import model_config, real_tokens
from flaxbert.tasks.seq2seq import encode_sources, read_texts, score, translate
from flaxbert.training import objectives, optim

# The checkout's ../shared/data/translation (see its README).
DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                    "shared", "data", "translation")


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--train", default=os.path.join(DATA, "examples_train.tsv"))
  p.add_argument("--dev", default=os.path.join(DATA, "examples_dev.tsv"))
  p.add_argument("--train-pairs", type=int, default=20000)
  p.add_argument("--dev-pairs", type=int, default=500)
  p.add_argument("--vocab-size", type=int, default=4000)
  p.add_argument("--max-length", type=int, default=32, help="source and target tokens")
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--ffn", type=int, default=256)
  p.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
  p.add_argument("--pre-ln", action="store_true")
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--label-smoothing", type=float, default=0.1)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--eval-every", type=int, default=100)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--warmup", type=int, default=None, help="default: steps // 10")
  p.add_argument("--beam", type=int, default=4)
  p.add_argument("--alpha", type=float, default=0.6)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="more flaxbert EncDecConfig overrides (JSON values)")
  p.add_argument("--no-length-buckets", action="store_true",
                 help="fixed-shape batches (one compilation) instead of the recipe's buckets")
  p.add_argument("--no-reference", action="store_true", help="flaxbert only")
  p.add_argument("--same-init", action="store_true",
                 help="flaxbert starts from the reference's initial weights (isolates training "
                 "from initialisation)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", default=None)
  p.add_argument("--out", default=None)
  return p.parse_args()


# --- data ------------------------------------------------------------------------------------

def prepare(args, workdir):
  """A seeded train subset, a BPE tokenizer over both of its sides, flaxbert's dataset."""
  with open(args.train, encoding="utf-8") as f:
    rows = f.read().splitlines()[1:]
  random.Random(1234).shuffle(rows)
  rows = rows[:args.train_pairs]
  train = os.path.join(workdir, "train.tsv")
  with open(train, "w", encoding="utf-8") as f:
    f.write("source\ttarget\n" + "\n".join(rows) + "\n")
  sources, references = read_texts(args.dev)
  sources, references = sources[:args.dev_pairs], references[:args.dev_pairs]
  dev = os.path.join(workdir, "dev.tsv")
  with open(dev, "w", encoding="utf-8") as f:
    f.write("source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in zip(sources, references)))
  text = os.path.join(workdir, "both_sides.txt")
  with open(text, "w", encoding="utf-8") as f:
    f.write("\n".join(r.replace("\t", "\n") for r in rows) + "\n")
  tokenizer_dir = os.path.join(workdir, "tokenizer")
  train_sentencepiece([text], args.vocab_size, tokenizer_dir, seed=args.seed)
  data = finetune_data("seq2seq", {"train": train, "dev": dev}, tokenizer_dir,
                       os.path.join(workdir, "data"), max_source_length=args.max_length,
                       max_target_length=args.max_length)
  return data, load_tokenizer(tokenizer_dir), sources, references


def dev_batches(data, batch_size):
  return list(data.batches("dev", batch_size=batch_size, shuffle=False, num_epochs=1,
                           drop_remainder=False))


# --- the reference ---------------------------------------------------------------------------

class Reference(tnn.Module):
  """torch nn.Transformer with flaxbert's embedding, positions and tied output."""

  def __init__(self, cfg):
    super().__init__()
    self.cfg = cfg
    self.transformer = tnn.Transformer(
        d_model=cfg.hidden_size, nhead=cfg.num_heads, num_encoder_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers, dim_feedforward=cfg.intermediate_size,
        dropout=cfg.hidden_dropout, activation="relu", layer_norm_eps=cfg.layer_norm_eps,
        batch_first=True, norm_first=cfg.pre_ln)   # its __init__ Xavier-initialises matrices
    if not cfg.pre_ln:   # nn.Transformer norms each stack's output even when post-LN
      self.transformer.encoder.norm = self.transformer.decoder.norm = None
    self.embed = tnn.Embedding(cfg.vocab_size, cfg.hidden_size)
    tnn.init.normal_(self.embed.weight, std=cfg.hidden_size ** -0.5)
    self.dropout = tnn.Dropout(cfg.hidden_dropout)

  def _embed(self, ids, offset=0):
    positions = np.arange(offset, offset + ids.shape[1])[None]
    pe = torch.from_numpy(np.array(sinusoidal_positions(positions, self.cfg.hidden_size)))
    return self.dropout(self.embed(ids) * math.sqrt(self.cfg.hidden_size) + pe)

  def encode(self, src, src_pad):
    return self.transformer.encoder(self._embed(src), src_key_padding_mask=src_pad)

  def decode(self, tgt_in, memory, src_pad):
    causal = self.transformer.generate_square_subsequent_mask(tgt_in.shape[1])
    y = self.transformer.decoder(self._embed(tgt_in), memory, tgt_mask=causal, tgt_is_causal=True,
                                 memory_key_padding_mask=src_pad)
    return y @ self.embed.weight.T

  def forward(self, src, src_pad, tgt_in):
    return self.decode(tgt_in, self.encode(src, src_pad), src_pad)


def flax_params_from(ref: Reference, params):
  """flaxbert parameters holding the reference's (initial) weights, for --same-init."""
  d = ref.cfg.hidden_size
  n, h = ref.cfg.num_heads, ref.cfg.head_dim

  def a(x):
    return np.asarray(x.detach().numpy(), np.float32)

  def attention(m):
    w, b = a(m.in_proj_weight), a(m.in_proj_bias)
    out = {name: {"kernel": w[i * d:(i + 1) * d].T.reshape(d, n, h),
                  "bias": b[i * d:(i + 1) * d].reshape(n, h)}
           for i, name in enumerate(("query", "key", "value"))}
    out["out"] = {"kernel": a(m.out_proj.weight).T.reshape(n, h, d), "bias": a(m.out_proj.bias)}
    return out

  def norm(m):
    return {"norm": {"scale": a(m.weight), "bias": a(m.bias)}}

  def ffn(layer):
    return {"intermediate": {"kernel": a(layer.linear1.weight).T, "bias": a(layer.linear1.bias)},
            "output": {"kernel": a(layer.linear2.weight).T, "bias": a(layer.linear2.bias)}}

  new = {"source_embed": {"embedding": a(ref.embed.weight)}}
  for i, layer in enumerate(ref.transformer.encoder.layers):
    new[f"encoder_{i}"] = {"self_attention": attention(layer.self_attn),
                           "attention_block": norm(layer.norm1), "ffn": ffn(layer),
                           "ffn_block": norm(layer.norm2)}
  for i, layer in enumerate(ref.transformer.decoder.layers):
    new[f"decoder_{i}"] = {"self_attention": attention(layer.self_attn),
                           "self_attention_block": norm(layer.norm1),
                           "cross_attention": attention(layer.multihead_attn),
                           "cross_attention_block": norm(layer.norm2), "ffn": ffn(layer),
                           "ffn_block": norm(layer.norm3)}
  if ref.cfg.pre_ln:
    for name, m in (("encoder_norm", ref.transformer.encoder.norm),
                    ("decoder_norm", ref.transformer.decoder.norm)):
      new[name] = {"scale": a(m.weight), "bias": a(m.bias)}
  if jax.tree.structure(new) != jax.tree.structure(params):
    raise SystemExit("--same-init: the reference's weights do not map onto flaxbert's "
                     "(untied or unshared embeddings?)")
  return jax.tree.map(lambda x, like: jnp.asarray(x, like.dtype), new, params)


def torch_inputs(batch, start_id):
  src = torch.from_numpy(np.asarray(batch["source_ids"], np.int64))
  src_pad = torch.from_numpy(np.asarray(batch["source_mask"]) == 0)
  tgt = torch.from_numpy(np.asarray(batch["target_ids"], np.int64))
  tgt_in = torch.cat([torch.full_like(tgt[:, :1], start_id), tgt[:, :-1]], dim=1)
  weight = torch.from_numpy(np.asarray(batch["target_mask"], np.float32))
  if "example_weight" in batch:
    weight = weight * torch.from_numpy(np.asarray(batch["example_weight"], np.float32))[:, None]
  return src, src_pad, tgt, tgt_in, weight


def torch_sums(model, batch, smoothing):
  cfg = model.cfg
  src, src_pad, tgt, tgt_in, weight = torch_inputs(batch, cfg.decoder_start_id)
  logits = model(src, src_pad, tgt_in)
  loss = tnn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none",
                                      label_smoothing=smoothing)
  nll = tnn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
  hits = (logits.argmax(-1) == tgt).float()
  return {"loss": (loss * weight).sum(), "nll": (nll * weight).sum(),
          "hits": (hits * weight).sum(), "weight": weight.sum()}


@torch.no_grad()
def torch_decode(model, ids, mask, max_length, beam, alpha):
  """Greedy (beam 1) or beam search as flaxbert.models.decoding does it, recomputing the
  prefix at each step (no cache)."""
  cfg = model.cfg
  src = torch.from_numpy(np.asarray(ids, np.int64))
  src_pad = torch.from_numpy(np.asarray(mask) == 0)
  batch = src.shape[0]
  k = max(beam, 1)
  memory = model.encode(src, src_pad).repeat_interleave(k, 0)
  src_pad = src_pad.repeat_interleave(k, 0)
  seqs = torch.full((batch * k, 1), cfg.decoder_start_id)
  if k == 1:
    done = torch.zeros(batch, dtype=torch.bool)
    for _ in range(max_length):
      token = model.decode(seqs, memory, src_pad)[:, -1].argmax(-1)
      token = torch.where(done, cfg.pad_token_id, token)
      seqs = torch.cat([seqs, token[:, None]], 1)
      done |= token == cfg.eos_token_id
      if done.all():
        break
    return [row[1:].tolist() for row in seqs]
  live = torch.tensor([0.0] + [-1e9] * (k - 1)).repeat(batch, 1)
  finished = [[] for _ in range(batch)]   # (score, tokens)
  for i in range(max_length):
    logp = torch.log_softmax(model.decode(seqs, memory, src_pad)[:, -1], -1)
    vocab = logp.shape[-1]
    cand = (live[:, :, None] + logp.view(batch, k, vocab)).view(batch, -1)
    top, index = cand.topk(2 * k, -1)
    beam_of, token = index // vocab, index % vocab
    new_live, new_seqs = [], []
    for b in range(batch):
      kept = []
      for j in range(2 * k):
        prefix = seqs[b * k + beam_of[b, j]]
        if token[b, j] == cfg.eos_token_id:
          if top[b, j] > -1e8:
            finished[b].append((top[b, j].item() / ((5 + i + 1) / 6) ** alpha,
                                prefix[1:].tolist()))
        elif len(kept) < k:
          kept.append((top[b, j], torch.cat([prefix, token[b, j:j + 1]])))
      new_live.append(torch.stack([s for s, _ in kept]))
      new_seqs.extend(t for _, t in kept)
      finished[b] = sorted(finished[b], key=lambda x: -x[0])[:k]
    live, seqs = torch.stack(new_live), torch.stack(new_seqs)
    bound = live[:, 0] / (((5 + max_length) / 6) ** alpha if alpha > 0 else 1.0)
    if all(len(finished[b]) == k and finished[b][-1][0] > bound[b] for b in range(batch)):
      break
  return [finished[b][0][1] if finished[b] else seqs[b * k, 1:].tolist()
          for b in range(batch)]


def torch_translate(model, tokenizer, sources, max_length, beam, alpha, batch_size=64):
  ids, mask = encode_sources(tokenizer, sources, max_length)
  eos, out = model.cfg.eos_token_id, []
  for start in range(0, len(sources), batch_size):
    for row in torch_decode(model, ids[start:start + batch_size],
                            mask[start:start + batch_size], max_length, beam, alpha):
      row = row[:row.index(eos)] if eos in row else row
      out.append(tokenizer.decode(row))
  return out


# --- the run ---------------------------------------------------------------------------------

def summarise(sums):
  return {"loss": sums["nll"] / sums["weight"], "accuracy": sums["hits"] / sums["weight"]}


def main():
  args = parse_args()
  torch.manual_seed(args.seed)
  torch.set_num_threads(max(os.cpu_count() or 1, 1))
  workdir = args.workdir or tempfile.mkdtemp(prefix="seq2seq_vs_reference_")
  os.makedirs(workdir, exist_ok=True)
  data, tokenizer, sources, references = prepare(args, workdir)
  overrides = dict(hidden_size=args.hidden, num_heads=args.heads, intermediate_size=args.ffn,
                   num_encoder_layers=args.layers, num_decoder_layers=args.layers,
                   pre_ln=args.pre_ln, hidden_dropout=args.dropout,
                   attention_dropout=args.dropout)
  overrides.update((k, json.loads(v)) for k, v in (s.split("=", 1) for s in args.set))
  config = model_config("tiny", overrides.items(), tokenizer)
  warmup = args.warmup if args.warmup is not None else args.steps // 10
  opt_cfg = optim.OptimizerConfig(learning_rate=args.lr, total_steps=args.steps,
                                  warmup_steps=warmup, weight_decay=0.0, clip_norm=1.0,
                                  b2=0.98, eps=1e-9)
  schedule = optim.learning_rate_schedule(opt_cfg)

  # flaxbert
  model = EncDecModel(config)
  params = encdec.init_params(model, jax.random.PRNGKey(args.seed))
  tx = optim.make_optimizer(opt_cfg)
  opt_state = tx.init(params)
  objective = objectives.seq2seq(model, args.label_smoothing)

  @jax.jit
  def flax_step(params, opt_state, batch, key):
    totals = objective.totals(batch)
    grads = jax.grad(lambda p: objective.loss(objective.sums(p, batch, key), totals))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  flax_eval = jax.jit(lambda params, batch: objective.sums(params, batch, None))

  # the reference
  ref = Reference(config)
  ref_opt = torch.optim.AdamW(ref.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9,
                              weight_decay=0.0)
  ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt,
                                                lambda s: float(schedule(s)) / args.lr)

  def ref_step(batch):
    ref.train()
    sums = torch_sums(ref, batch, args.label_smoothing)
    ref_opt.zero_grad()
    (sums["loss"] / sums["weight"].clamp(min=1.0)).backward()
    tnn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    ref_opt.step()
    ref_sched.step()

  dev = dev_batches(data, args.batch_size)
  if args.same_init:
    params = flax_params_from(ref, params)
    opt_state = tx.init(params)
    ref.eval()
    with torch.no_grad():
      theirs = float(torch_sums(ref, dev[0], 0.0)["nll"])
    ours = float(flax_eval(params, dev[0])["nll"])
    print(json.dumps({"same_init_first_dev_batch_nll": {"flaxbert": ours, "reference": theirs}}),
          flush=True)
  result = {"config": vars(args), "model": config.to_dict(),
            "parameters": {"flaxbert": int(sum(x.size for x in jax.tree.leaves(params))),
                           "reference": int(sum(p.numel() for p in ref.parameters()))},
            "copy_baseline": score(sources, references), "points": [],
            "train_seconds": {"flaxbert": 0.0, "reference": 0.0}, "train_tokens": 0,
            "compile_seconds": 0.0}
  print(json.dumps({"copy_baseline": result["copy_baseline"]}), flush=True)
  train = iter(data.batches("train", batch_size=args.batch_size, seed=args.seed,
                            bucket_by_length=not args.no_length_buckets))
  key = jax.random.PRNGKey(args.seed + 1)
  step, shapes = 0, set()
  while step < args.steps:
    chunk = [next(train) for _ in range(min(args.eval_every, args.steps - step))]
    for batch in chunk:
      # A batch of a new (bucket) shape compiles flaxbert's step: timed apart, and that
      # batch's tokens and the reference's time on it left out of both rates.
      shape = tuple(np.shape(batch[k]) for k in ("source_ids", "target_ids"))
      compiling = shape not in shapes
      shapes.add(shape)
      start = time.perf_counter()
      params, opt_state = flax_step(params, opt_state, batch, jax.random.fold_in(key, step))
      jax.block_until_ready(params)
      seconds = time.perf_counter() - start
      step += 1
      if compiling:
        result["compile_seconds"] += seconds
      else:
        result["train_seconds"]["flaxbert"] += seconds
        result["train_tokens"] += real_tokens(batch)
      if not args.no_reference:
        start = time.perf_counter()
        ref_step(batch)
        if not compiling:
          result["train_seconds"]["reference"] += time.perf_counter() - start
    result["points"].append(evaluate(args, step, model, params, flax_eval, ref, dev,
                                     tokenizer, sources, references))
    print(json.dumps(result["points"][-1]), flush=True)
  result["tokens_per_s"] = {name: result["train_tokens"] / max(seconds, 1e-9)
                            for name, seconds in result["train_seconds"].items() if seconds}
  result["load_average"] = os.getloadavg()
  print(json.dumps({k: result[k] for k in ("copy_baseline", "train_seconds", "compile_seconds",
                                           "tokens_per_s",
                                           "parameters", "load_average")}))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)


def evaluate(args, step, model, params, flax_eval, ref, dev, tokenizer, sources, references):
  point = {"step": step, "flaxbert": {}, "reference": {}}
  sums = {}
  for batch in dev:
    for name, value in flax_eval(params, batch).items():
      sums[name] = sums.get(name, 0.0) + float(value)
  point["flaxbert"].update(summarise(sums))
  beams = [1] + ([args.beam] if step == args.steps and args.beam > 1 else [])
  for beam in beams:
    name = "greedy" if beam == 1 else f"beam{beam}"
    hyps, _ = translate(model, params, tokenizer, sources, max_source_length=args.max_length,
                        max_length=args.max_length, beam_size=beam, alpha=args.alpha)
    point["flaxbert"].update({f"{m}_{name}": v for m, v in score(hyps, references).items()})
    if beam == 1:
      point["flaxbert"]["samples"] = hyps[:3]
  if args.no_reference:
    return point
  ref.eval()
  with torch.no_grad():
    sums = {}
    for batch in dev:
      for name, value in torch_sums(ref, batch, 0.0).items():
        sums[name] = sums.get(name, 0.0) + float(value)
  point["reference"].update(summarise(sums))
  for beam in beams:
    name = "greedy" if beam == 1 else f"beam{beam}"
    hyps = torch_translate(ref, tokenizer, sources, args.max_length, beam, args.alpha)
    point["reference"].update({f"{m}_{name}": v for m, v in score(hyps, references).items()})
    if beam == 1:
      point["reference"]["samples"] = hyps[:3]
  return point


if __name__ == "__main__":
  main()
