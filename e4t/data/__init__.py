"""Curation, shards and loaders: decoding, the WebDataset writer/reader, manifests."""
