"""The settings of the three run kinds (pretraining, fine-tuning, seq2seq fine-tuning): one
frozen dataclass each, read by the recipes and turned into command-line flags by
flaxbert/commands/flags.py.

Every field is made by `setting` and carries, as metadata:
  help          the text of `--help` (plain text; the flag's default is appended there)
  flag          the flag, when it is not `--` + the field name with dashes
  aliases       older spellings of the flag that keep working
  choices       the allowed values, if restricted
  metavar       the value's name in `--help`, when not derived from the flag
  default_help  what a None or empty default means ("train one", "10% of the steps")
  false_flag    for an optional bool (default None): (flag, help) of the flag that sets False
  identity      whether the setting is part of what the run is: a re-run in an existing workdir
                with a different value is refused. Settings that only say how the run is watched,
                saved or laid out on devices (logging and evaluation frequency, checkpointing,
                progress bars, the data cache, the mesh, evaluation batch sizes) are not, so they
                may change between a run and its resume.

A setting that several run kinds share takes its metadata from SHARED, so its flag, help and
identity are the same in every command; only its default may differ per run kind.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flaxbert.tasks import SPECS
from flaxbert.training import optim

# The BERT fine-tuning commands (seq2seq is the encoder-decoder's, with its own config).
FINETUNE_TASKS = ("classify", "ner", "qa")
# FinetuneConfig fields that only extractive QA reads; other tasks' commands leave them out.
QA_SETTINGS = ("doc_stride", "max_query_length", "max_answer_length", "n_best", "version_2",
               "null_threshold")
# The float dev scores each fine-tuning task reports (flaxbert/tasks/: classify.py, ner.py,
# squad.py), by task name: the names --metric-for-best takes. Known here rather than from the
# first evaluation, so that a misspelt name stops the command before its workdir is made, not
# after an epoch of training. The SQuAD v2 splits exist only for files with unanswerable
# questions; the recipe checks the dev file gives the chosen one before it trains.
DEV_METRICS = {
    "classify": ("accuracy", "macro_f1", "matthews"),
    "regression": ("pearson", "spearman", "mse"),
    "ner": ("precision", "recall", "f1", "token_accuracy"),
    "qa": ("exact_match", "f1", "HasAns_exact_match", "HasAns_f1", "NoAns_exact_match",
           "NoAns_f1"),
}
# Dev scores where lower is better: the default of --no-greater-is-better.
LOWER_IS_BETTER = ("mse",)


def setting(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,
            aliases: tuple[str, ...] = (), choices: tuple | None = None,
            metavar: str | None = None, default_help: str | None = None,
            false_flag: tuple[str, str] | None = None, identity: bool = True):
  """A dataclass field with its flag's metadata (see the module docstring)."""
  return dataclasses.field(default=default, metadata={
      "help": help, "flag": flag, "aliases": tuple(aliases), "choices": choices,
      "metavar": metavar, "default_help": default_help, "false_flag": false_flag,
      "identity": identity})


SHARED: dict[str, dict[str, Any]] = {
    "workdir": dict(metavar="DIR", help="run directory: checkpoints, metrics.jsonl, bundle/; re-running the "
                    "same command resumes the run"),
    "model": dict(flag="--config", metavar="PRESET", help="model preset: tiny, bert_12_768_12, bert_24_1024_16 "
                  "or an HF config.json for BERT; tiny, small or transformer_base for an "
                  "encoder-decoder"),
    "overrides": dict(flag="--set", metavar="KEY=VALUE", help="model config field, repeatable, "
                      "e.g. --set dtype=bfloat16 --set remat=true; values are read as JSON where "
                      "they parse (numbers, true/false)"),
    "vocab_size": dict(help="vocabulary size of the tokenizer trained when none is given"),
    "steps": dict(help="optimizer updates (may grow on a resumed run: train longer)",
                  identity=False),
    "batch_size": dict(help="global batch size: all devices and processes together"),
    "accum_steps": dict(help="gradient accumulation: microbatches per update (the batch "
                        "size counts all of them)"),
    "mesh": dict(metavar="data=D,fsdp=F,tensor=T", help="device mesh",
                 default_help="all devices on data", identity=False),
    "learning_rate": dict(flag="--lr", help="peak learning rate"),
    "warmup_steps": dict(help="steps of linear warmup", default_help="10% of the steps"),
    "weight_decay": dict(help="decoupled weight decay"),
    "clip_norm": dict(help="global-norm gradient clipping (0: off)"),
    "seed": dict(help="seed of initialisation, data order and dropout"),
    "max_train_examples": dict(metavar="N", help="train on a seeded random subset of N "
                               "examples"),
    "log_every": dict(help="steps between logged metrics", identity=False),
    "eval_every": dict(help="steps between evaluations on held-out data", identity=False),
    "checkpoint_every": dict(help="steps between checkpoints", identity=False),
    "keep_checkpoints": dict(help="newest checkpoints kept on disk", identity=False),
    "async_checkpoints": dict(flag="--sync-checkpoints", help="save checkpoints synchronously "
                              "(default: in the background while training goes on)",
                              identity=False),
    "progress": dict(flag="--quiet", help="no progress bars", identity=False),
}


def shared(name: str, default: Any = dataclasses.MISSING, **more):
  """The field of a shared setting; `more` may only say what a None default means."""
  assert set(more) <= {"default_help"}, more
  return setting(default, **{**SHARED[name], **more})


def identity_fields(cls) -> tuple[str, ...]:
  """The fields of a config class that a re-run in the same workdir must not change."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["identity"])


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """BERT pretraining (MLM + NSP), or encoder-decoder span-corruption pretraining."""
  workdir: str = shared("workdir")
  model: str | None = shared("model", None, default_help="tiny; with --init, the checkpoint's")
  overrides: tuple[tuple[str, Any], ...] = shared("overrides", ())
  init: str | None = setting(
      None, metavar="BUNDLE_OR_HF_DIR", default_help="a fresh model of --config",
      help="continue pretraining a flaxbert bundle or HF BERT checkpoint: its model config, "
      "tokenizer and weights (MLM and NSP heads where it has them)")
  corpus: tuple[str, ...] = setting(
      (), metavar="FILE", default_help="the embedded corpus",
      help="BERT-format text: one sentence per line, a blank line between documents")
  eval_corpus: tuple[str, ...] = setting(
      (), metavar="FILE", help="held-out text",
      default_help="every 50th document of the corpus")
  tokenizer: str | None = setting(None, metavar="DIR", help="tokenizer directory",
                                  default_help="train one into WORKDIR/tokenizer")
  vocab_size: int | None = shared("vocab_size", None, default_help="2000 for tiny, 8000 "
                                  "otherwise")
  lowercase: bool = setting(False, help="lowercase the text (for a trained tokenizer)")
  data_dir: str | None = setting(None, metavar="DIR", help="cache of prepared datasets",
                                 default_help="WORKDIR/data/prepared", identity=False)
  steps: int | None = shared("steps", None, default_help="1000 for tiny; 1M otherwise, "
                             "--init runs included")
  batch_size: int = shared("batch_size", 32)
  seq_len: int | None = setting(None, flag="--max-length", aliases=("--seq-len",),
                                help="tokens per sequence", default_help="64 for tiny, 128 "
                                "otherwise")
  max_predictions: int | None = setting(None, help="masked positions per sequence",
                                        default_help="ceil(0.15 x max-length)")
  whole_word: bool = setting(False, help="whole-word masking")
  pack: bool = setting(False, help="pack several sentence pairs into each sequence (attention "
                       "stays within a pair): no compute spent on padding")
  accum_steps: int = shared("accum_steps", 1)
  mesh: str | None = shared("mesh", None)
  optimizer: str = setting("adamw", choices=optim.OPTIMIZERS, help="optimizer")
  learning_rate: float | None = shared("learning_rate", None,
                                       default_help="2e-3 for tiny; 1e-4 otherwise, "
                                       "--init runs included")
  warmup_steps: int | None = shared("warmup_steps", None)
  schedule: str = setting("linear", choices=optim.SCHEDULES, help="decay after warmup")
  weight_decay: float = shared("weight_decay", 0.01)
  clip_norm: float = shared("clip_norm", 1.0)
  seed: int = shared("seed", 0)
  log_every: int = shared("log_every", 10)
  eval_every: int = shared("eval_every", 100)
  eval_batches: int = setting(4, help="held-out batches per evaluation", identity=False)
  checkpoint_every: int = shared("checkpoint_every", 100)
  keep_checkpoints: int = shared("keep_checkpoints", 3)
  async_checkpoints: bool = shared("async_checkpoints", True)
  progress: bool = shared("progress", True)

  # tiny is the README's main job: a model that visibly learns in minutes on a laptop CPU.
  # Its defaults (vocabulary 2000, 64 tokens, lr 2e-3, 1000 steps; no dropout in the preset)
  # come from a sweep on the embedded corpus: held-out MLM accuracy 0.069 -> 0.132 for about
  # 10% more CPU time than 300 steps of the old ones. The others follow BERT.

  def __post_init__(self):
    # The model is the tiny preset unless --config names one or --init brings one; runs
    # record "tiny" as before.
    if self.model is None and self.init is None:
      object.__setattr__(self, "model", "tiny")
    # Resolved here, not in a property: every recipe reads seq_len itself. Half of BERT's 128
    # for tiny: as many updates per step on half the compute, and updates are what a short
    # run lacks.
    if self.seq_len is None:
      object.__setattr__(self, "seq_len", 64 if self.model == "tiny" else 128)

  @property
  def trained_vocab_size(self) -> int:
    """Pieces of the tokenizer a run trains when given none: for tiny, a vocabulary that fits
    the embedded corpus (1.4 MB) and a 128-wide model, whose embedding table would otherwise
    be most of its parameters, updated rarely. (An --init run refuses --vocab-size.)"""
    return self.vocab_size or (2000 if self.model == "tiny" else 8000)

  @property
  def total_steps(self) -> int:
    return self.steps if self.steps is not None else (1000 if self.model == "tiny" else 1_000_000)

  def optimizer_config(self) -> optim.OptimizerConfig:
    lr = self.learning_rate
    if lr is None:
      lr = 2e-3 if self.model == "tiny" else 1e-4
    warmup = self.warmup_steps if self.warmup_steps is not None else self.total_steps // 10
    return optim.OptimizerConfig(
        name=self.optimizer, learning_rate=lr, warmup_steps=warmup, total_steps=self.total_steps,
        schedule=self.schedule, weight_decay=self.weight_decay, clip_norm=self.clip_norm)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """Fine-tuning a bundle or HF checkpoint on classification, NER or extractive QA."""
  task: str = setting(choices=FINETUNE_TASKS, help="the task (given by the command)")
  train: str = setting(metavar="FILE", help="training file: classify a TSV with a header "
                       "(sentence, or sentence1 and sentence2; label), ner CoNLL "
                       "token<TAB>tag lines, qa SQuAD JSON")
  dev: str = setting(metavar="FILE", help="development file, same format")
  init: str = setting(metavar="BUNDLE_OR_HF_DIR",
                      help="flaxbert bundle or HF BERT checkpoint to start from")
  workdir: str = shared("workdir")
  overrides: tuple[tuple[str, Any], ...] = shared("overrides", ())
  regression: bool = setting(False, help="float labels (MSE; Pearson/Spearman)")
  epochs: float = setting(3.0, help="passes over the training set", identity=False)
  max_steps: int | None = setting(
      None, flag="--max-steps", aliases=("--steps",), metavar="N", identity=False,
      help="optimizer updates, overriding --epochs (may grow on a resumed run: train longer)",
      default_help="--epochs passes")
  batch_size: int = shared("batch_size", 32)
  eval_batch_size: int = setting(64, help="batch size of dev scoring", identity=False)
  max_seq_length: int = setting(128, flag="--max-length", help="tokens per row")
  learning_rate: float = shared("learning_rate", 5e-5)
  warmup_ratio: float = setting(0.1, help="fraction of the steps of linear warmup, then linear "
                                "decay to 0")
  weight_decay: float = shared("weight_decay", 0.01)
  clip_norm: float = shared("clip_norm", 1.0)
  seed: int = shared("seed", 0)
  max_train_examples: int | None = shared("max_train_examples", None)
  accum_steps: int = shared("accum_steps", 1)
  max_dev_examples: int | None = setting(None, metavar="N", identity=False,
                                         help="score on the first N dev examples")
  eval_every: int | None = shared("eval_every", None, default_help="once per epoch")
  metric_for_best: str | None = setting(
      None, metavar="NAME", help="dev score that picks best/ and drives early stopping: "
      + "; ".join(f"{task} {', '.join(names)}" for task, names in DEV_METRICS.items()),
      default_help="the task's main metric: " + ", ".join(
          f"{task} {SPECS[task][2]}" for task in DEV_METRICS))
  greater_is_better: bool | None = setting(
      None, flag="--greater-is-better",
      false_flag=("--no-greater-is-better", "a lower --metric-for-best is better"),
      help="a higher --metric-for-best is better",
      default_help=f"true, false for {', '.join(LOWER_IS_BETTER)}")
  early_stopping_patience: int | None = setting(
      None, metavar="N", help="stop after N evaluations in a row without improvement of "
      "--metric-for-best; the run then ends as a finished one (bundle/, results.json)",
      default_help="never stop early")
  doc_stride: int = setting(128, help="tokens between window starts")
  max_query_length: int = setting(64, help="question tokens kept")
  max_answer_length: int = setting(30, help="longest answer, in tokens")
  n_best: int = setting(20, help="start/end candidates per window")
  version_2: bool | None = setting(
      None, flag="--version-2", false_flag=("--version-1", "always answer (SQuAD v1.1)"),
      help="allow no answer (SQuAD v2.0)", default_help="detected from is_impossible / version")
  null_threshold: float = setting(0.0, help="v2: answer \"\" when the null score minus the best "
                                  "span score exceeds this")
  mesh: str | None = shared("mesh", None)
  log_every: int = shared("log_every", 10)
  checkpoint_every: int | None = shared("checkpoint_every", None, default_help="once per epoch")
  keep_checkpoints: int = shared("keep_checkpoints", 2)
  async_checkpoints: bool = shared("async_checkpoints", True)
  progress: bool = shared("progress", True)

  @property
  def task_name(self) -> str:
    """The task's one name (classify with --regression is the regression task)."""
    return "regression" if self.regression else self.task

  @property
  def head(self) -> str:
    return SPECS[self.task_name][0]

  @property
  def data_task(self) -> str:
    return SPECS[self.task_name][1]

  @property
  def metric(self) -> str:
    """The task's main metric."""
    return SPECS[self.task_name][2]

  @property
  def best_metric(self) -> str:
    """The dev score that picks best/ and drives early stopping."""
    return self.metric_for_best or self.metric

  @property
  def higher_is_better(self) -> bool:
    if self.greater_is_better is not None:
      return self.greater_is_better
    return self.best_metric not in LOWER_IS_BETTER


@dataclasses.dataclass(frozen=True)
class DistillConfig(FinetuneConfig):
  """Distilling a fine-tuned classify, NER or QA bundle (the teacher) into a smaller student,
  with the fine-tuning settings; `task` is the teacher's, `init` the teacher bundle."""
  student: str | None = setting(
      None, metavar="PRESET|CONFIG|BUNDLE", help="the student: a preset or config.json (fresh "
      "weights), or a bundle / HF checkpoint (its encoder, the teacher's head)",
      default_help="--student-layers layers of the teacher")
  student_layers: int | None = setting(
      None, metavar="N", help="layers of the student: N evenly spaced layers of the teacher "
      "(first and last kept, as DistilBERT), or the depth of a --student preset",
      default_help="half the teacher's")
  temperature: float = setting(2.0, help="softmax temperature T of the KD term")
  alpha: float = setting(0.5, help="weight of the KD term, T^2 KL(teacher_T || student_T); "
                         "1 - alpha weighs the cross-entropy on the hard labels")
  unlabeled: tuple[str, ...] = setting(
      (), metavar="FILE", help="more texts for the transfer set, without labels (classify and "
      "regression: a sentence, or sentence1<TAB>sentence2, per line; ner: raw text, a "
      "sentence per line; qa: SQuAD JSON, answers not needed): the student learns the "
      "teacher's outputs on them (KD term only)")
  cache_teacher: bool = setting(
      False, help="run the teacher once over the transfer set before training (its outputs "
      "stored in WORKDIR/data) instead of in every step, which then trains the student "
      "alone; not with losses on the teacher's hidden states or attention")

  hidden_weight: float = setting(
      0.0, metavar="W", help="weight of TinyBERT's hidden-state loss: MSE of the student's "
      "hidden states (embeddings included, through a learned projection when the widths "
      "differ) to the teacher's, summed over --layer-map pairs", default_help="0, off")
  attention_weight: float = setting(
      0.0, metavar="W", help="weight of MiniLM's last-layer self-attention loss: KL of the "
      "attention distributions plus KL of the value relations", default_help="0, off")
  relation_heads: int | None = setting(
      None, metavar="R", help="compare attention relations over R heads of the concatenated "
      "query/key/value (MiniLMv2), needed when the teacher and student head counts differ; "
      "R divides both widths", default_help="each model's own heads")
  layer_map: str | None = setting(
      None, metavar="S:T,...", help="the hidden-state pairs of --hidden-weight, student:teacher "
      "indices, 0 = embeddings, e.g. 0:0,1:2,2:4", default_help="uniform: i to i x teacher "
      "layers / student layers")

def _field_of(cls, name: str, **metadata):
  """The field `name` of the config class `cls` (its default, flag and help), for another
  class; `metadata` changes some of it (what a None default means there)."""
  field = cls.__dataclass_fields__[name]
  return dataclasses.field(default=field.default, metadata={**field.metadata, **metadata})


@dataclasses.dataclass(frozen=True)
class DistillMLMConfig(PretrainConfig):
  """General (pretraining-stage) distillation, `flaxbert distill --objective mlm`: a student
  learns a teacher's masked-language-model distribution on a corpus. The pretraining settings
  (corpus, masking, steps, optimizer), `init` being the teacher: its tokenizer reads the
  corpus and its config bounds --max-length; its architecture is the student's unless
  --student says otherwise."""
  corpus: tuple[str, ...] = _field_of(PretrainConfig, "corpus", default_help=None)
  steps: int | None = _field_of(PretrainConfig, "steps", default_help="10000")
  learning_rate: float | None = _field_of(PretrainConfig, "learning_rate", default_help="1e-4")
  seq_len: int | None = _field_of(PretrainConfig, "seq_len", default_help="128")
  student: str | None = _field_of(DistillConfig, "student")
  student_layers: int | None = _field_of(DistillConfig, "student_layers")
  temperature: float = setting(2.0, help="softmax temperature T of the KD term")
  alpha: float = setting(0.5, help="weight of the KD term at the masked positions, T^2 "
                         "KL(teacher_T || student_T); 1 - alpha weighs the MLM cross-entropy "
                         "on the true tokens")
  # The feature losses on the teacher's layers, as in task distillation (the student then
  # mimics the teacher's hidden states and last-layer attention on the corpus rows too).
  hidden_weight: float = _field_of(DistillConfig, "hidden_weight")
  attention_weight: float = _field_of(DistillConfig, "attention_weight")
  relation_heads: int | None = _field_of(DistillConfig, "relation_heads")
  layer_map: str | None = _field_of(DistillConfig, "layer_map")

  @property
  def total_steps(self) -> int:
    # Not pretraining's 1M: a student starts from the teacher's layers (or its embeddings).
    return self.steps if self.steps is not None else 10_000


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
  """Encoder-decoder fine-tuning on source<TAB>target pairs."""
  workdir: str = shared("workdir")
  train: str = setting(metavar="TSV", help="source<TAB>target pairs")
  dev: str = setting(metavar="TSV", help="development pairs, same format")
  init: str | None = setting(None, metavar="BUNDLE", help="encoder-decoder bundle to start "
                             "from (its tokenizer and config are used)",
                             default_help="a fresh model of --config")
  # The defaults are a recipe that learns in half an hour on 2 CPU cores (README, "Encoder-
  # decoder"): on the English-German dictionary phrases a 2,000-piece vocabulary beat 8,000
  # (chrF 10.9 against 9.9 after 1,000 steps, and faster), and the `small` model at 3e-3
  # beat 256 wide at 2e-3 at equal wall time.
  model: str = shared("model", "small")
  overrides: tuple[tuple[str, Any], ...] = shared("overrides", ())
  vocab_size: int = shared("vocab_size", 2000)
  max_source_length: int = setting(64, help="source tokens per pair")
  max_target_length: int = setting(64, help="target tokens per pair")
  steps: int = shared("steps", 5000)
  batch_size: int = shared("batch_size", 64)
  bucket_by_length: bool = setting(
      True, flag="--no-length-buckets", help="batch pairs in plain shuffled order, padded to "
      "the maximum lengths (default: batches of similar lengths with padding cut to multiples "
      "of 8)")
  mesh: str | None = shared("mesh", None)
  learning_rate: float = shared("learning_rate", 3e-3)
  warmup_steps: int | None = shared("warmup_steps", None)
  weight_decay: float = shared("weight_decay", 0.0)
  clip_norm: float = shared("clip_norm", 1.0)
  label_smoothing: float = setting(0.1, help="label smoothing of the training loss")
  seed: int = shared("seed", 0)
  log_every: int = shared("log_every", 10)
  eval_every: int = shared("eval_every", 1000)
  eval_examples: int | None = setting(None, metavar="N", identity=False, default_help="all",
                                      help="decode only the first N dev pairs (the loss is "
                                      "computed on all)")
  beam_size: int = setting(4, flag="--beam", help="beam size of the final evaluation")
  alpha: float = setting(0.6, help="length penalty exponent of beam search")
  decode_batch_size: int = setting(64, help="dev sources decoded per batch", identity=False)
  checkpoint_every: int = shared("checkpoint_every", 200)
  keep_checkpoints: int = shared("keep_checkpoints", 3)
  async_checkpoints: bool = shared("async_checkpoints", True)
  progress: bool = shared("progress", True)
  max_train_examples: int | None = shared("max_train_examples", None)
  accum_steps: int = shared("accum_steps", 1)
