"""The fine-tuning tasks (registry.py: one object per task) and their files and metrics.

classify.py: TSV reading/validation, label probabilities, accuracy, macro-F1, Matthews,
  confusion matrix and per-class scores, Pearson/Spearman.
ner.py: CoNLL reading/writing, word-level encoding, entity spans, seqeval entity scores.
squad.py: SQuAD JSON validation, windowing glue, n-best span search and null odds, official
  EM/F1 and evaluate-v2.0's best null thresholds.
seq2seq.py: source<TAB>target files, translation, sacrebleu BLEU/chrF.
predict.py: `flaxbert predict` / `flaxbert evaluate` for every task through the registry (and
  the bundle loading flaxbert.inference.pipeline shares).
"""

# What the CLI and the run configs need to know of each task, here so that they need not
# import the task machinery (models, scipy, seqeval, sacrebleu): name -> (model head, data
# builder, main metric), in the registry's order. registry.py makes its Task objects from it.
SPECS = {
    "classify": ("classification", "classification", "accuracy"),
    "regression": ("regression", "regression", "pearson"),
    "ner": ("tagging", "tagging", "f1"),
    "qa": ("span_qa", "squad", "f1"),
    "seq2seq": ("seq2seq", "seq2seq", "bleu"),
}
NAMES = tuple(SPECS)
