"""Thin adapters from Amazon SageMaker's container contracts (training and hosting) to ``ncf_core``."""
