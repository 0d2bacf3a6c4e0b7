"""Data: RLE, ingest, generated data, splits, label space, datasets and transforms, image decoding."""
