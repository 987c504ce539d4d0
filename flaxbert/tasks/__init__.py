"""The fine-tuning tasks (registry.py: one object per task) and their files and metrics.

classify.py: TSV reading/validation, accuracy, macro-F1, Matthews, Pearson/Spearman.
ner.py: CoNLL reading/writing, word-level encoding, seqeval entity scores.
squad.py: SQuAD JSON validation, windowing glue, n-best span search, official EM/F1.
seq2seq.py: source<TAB>target files, translation, sacrebleu BLEU/chrF.
predict.py: `flaxbert predict` / `flaxbert evaluate` for every task through the registry.
"""

# The registry's task names, in its order, here so that the CLI can list them without
# importing the models (tests/test_tasks.py checks they match registry.TASKS).
NAMES = ("classify", "regression", "ner", "qa", "seq2seq")
