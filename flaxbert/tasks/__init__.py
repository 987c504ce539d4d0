"""Per-task metrics and file I/O for fine-tuning, prediction and evaluation.

classify.py: TSV reading/validation, accuracy, macro-F1, Matthews, Pearson/Spearman.
ner.py: CoNLL reading/writing, word-level encoding, seqeval entity scores.
squad.py: SQuAD JSON validation, windowing glue, n-best span search, official EM/F1.
"""
