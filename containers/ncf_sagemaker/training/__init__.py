"""SageMaker's training contract (``docker run IMAGE train``) translated into ``ncf_core`` calls."""
