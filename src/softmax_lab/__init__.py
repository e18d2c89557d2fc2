"""softmax-lab: softmax regression on Fashion-MNIST, two implementations, five losses, every run in MLflow."""
