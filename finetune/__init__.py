"""`python -m finetune TASK ...` = `flaxbert finetune TASK ...`."""
