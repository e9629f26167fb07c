"""MLOps wiring: the SageMaker pipeline (train → evaluate → gate → register) over our two images.

Only wiring lives here: the domain is ``ncf_core``, the container programs are ``ncf_sagemaker`` and the
AWS conventions (session, checks, messages) are ``ncf_launch.aws_client``. ``parameters`` declares the
pipeline's parameters without the SDK; ``pipeline`` builds the one ``Pipeline``; ``session`` compiles it
offline; ``cli`` is ``scripts/pipeline.sh``.
"""
