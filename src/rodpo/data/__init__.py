"""Raw data: download, parse and preprocess Amazon review datasets into sequences."""
