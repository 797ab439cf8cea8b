"""Reading records (JSONL, parquet, datasets folders, the Hugging Face cache) and tokenising them."""
