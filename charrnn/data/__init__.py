"""Text in, token ids out: the vocabulary, corpora and their prepared cache, batching, memory tasks."""
