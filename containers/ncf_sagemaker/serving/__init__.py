"""SageMaker hosting for ``ncf_core`` artifacts: ``serve`` runs gunicorn with the ASGI app in ``app``.

Layout (each module does one thing, so the hot path stays readable and the rest stays testable):

- ``settings``   every knob, read once from the environment (SageMaker's names come from ``platform``)
- ``errors``     HTTP errors with a status and a JSON body that says what is wrong
- ``protocol``   content negotiation and request validation (pure functions, no web framework)
- ``handler``    one served model: the sagemaker-inference seam (model_fn / input_fn / predict_fn /
                 output_fn, overridable by ``code/inference.py``), warm-up, health; its default
                 ``predict_fn`` maps each query onto one ``ncf_core.inference.Recommender`` call
- ``registry``   multi-model endpoint state shared by every worker process (a locked file)
- ``app``        the ASGI app (Starlette): one routing table, raw ASGI endpoints for the hot routes
- ``gunicorn_config`` and ``server``: process model and the ``serve`` program
"""
