"""TFRecord datasets: write (atomic, sharded, compressed), read (tf.data), check, and build real datasets."""
from .reader import DatasetDir, make_dataset, open_dataset, parse_batch, parse_spec_features
from .writer import encode_text_features, write_dataset

__all__ = ["DatasetDir", "make_dataset", "open_dataset", "parse_batch", "parse_spec_features",
           "encode_text_features", "write_dataset"]
