"""The data: corpora, preparing a dataset, the tokenizer, tensor files and batches."""
