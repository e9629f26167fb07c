"""SageMaker hosting for ``ncf_core`` artifacts: ``serve`` runs gunicorn with the ASGI app in ``app``.

One invocation crosses four modules, each once: ``app`` (HTTP: body, scheduling, reply) → ``handler``
(the model's input_fn → predict_fn → output_fn) → ``protocol`` (parse the request, encode the answer) and
``ncf_core.inference.Recommender`` (the model's answer, and its checks on the values).

- ``settings``   every knob, read once from the environment (SageMaker's names come from ``contract``)
- ``responses``  the one response type (``Reply``) and HTTP errors with a status and a message
- ``protocol``   content negotiation, request parsing and response encoding (pure functions)
- ``handler``    one served model: the sagemaker-inference contract (model_fn / input_fn / predict_fn /
                 output_fn, overridable by ``code/inference.py``), warm-up, health, costs
- ``multi_model`` multi-model endpoint state shared by every worker process (a locked file)
- ``app``        the ASGI app (Starlette): one routing table, one endpoint type, one error reply
- ``sliced_json`` large JSON bodies parsed a slice at a time; ``worker``, ``gunicorn_config`` and
  ``server``: process model and the ``serve`` program
"""
