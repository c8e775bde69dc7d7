"""Training: the config, the student trainer, the run object (`ReuseTrainer`), the methods and their parts."""
