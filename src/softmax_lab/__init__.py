"""softmax-lab: softmax regression on Fashion-MNIST, three implementations, six losses, every run in MLflow.

Importing it registers the config's resolver (`${project_root:}`), so Hydra's own compose API reads conf/ too; the
Python API for notebooks is softmax_lab.jobs.api."""

from softmax_lab.config import register_resolvers

register_resolvers()
