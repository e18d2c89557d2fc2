"""Lightning's Trainer as softmax-lab builds it: the flags it honours or refuses, callbacks, checkpoints, DDP."""
