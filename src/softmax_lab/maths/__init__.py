"""The formulas: losses and their gradients, the two models, the hand-written SGD, the metrics, pixels."""
