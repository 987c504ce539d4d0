"""Context-free word vectors: word2vec (skip-gram, CBOW) and fastText-style subword vectors.

  config.py    WordvecConfig: the settings, one flag each
  vocab.py     corpus -> vocabulary, token ids, subsampling and negative-sampling tables
  subword.py   character n-grams of a word hashed into buckets (fastText)
  examples.py  one epoch's training examples: subsampling, dynamic windows
  step.py      the jitted negative-sampling update over many large batches at once
  train.py     the resumable training run (flaxbert.training.run.open_run); deals the
               examples out to the batches
  formats.py   word2vec text and binary, GloVe text, fastText .vec
  evaluate.py  word similarity, analogies (3CosAdd, 3CosMul), nearest neighbours
"""
