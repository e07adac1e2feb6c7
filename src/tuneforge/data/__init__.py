"""Data: reading row files, validating their shape, tokenizing with loss masks, collating batches."""
