"""The `latent_domain_accuracy` evaluate metric module (load it by path: `evaluate.load(hf_mrl.metrics.METRIC_PATH)`)."""
