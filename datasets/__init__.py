"""tf.data input pipelines: sources (CIFAR-10 in its on-disk forms) and transforms."""
