"""`python -m pretrain ...`: the pretraining launcher, the same as `flaxbert pretrain ...`."""
