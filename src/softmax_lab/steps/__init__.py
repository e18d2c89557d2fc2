"""The LightningModule and how each implementation takes its SGD steps."""
