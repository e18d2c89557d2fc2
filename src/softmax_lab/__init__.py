"""softmax-lab: softmax regression on Fashion-MNIST, two implementations, six losses, every run in MLflow."""
