"""Fashion-MNIST: reading and validating the IDX files, finding them, the splits, the in-memory batches, the
LightningDataModule; and a user's own image files for predict.py."""
