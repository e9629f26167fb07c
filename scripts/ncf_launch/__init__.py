"""The launch scripts behind scripts/*.sh: build & push images, upload data, train, deploy, invoke, clean up.

Each command is one module with a ``main(argv)``; ``python -m ncf_launch COMMAND ...`` runs it (the .sh
wrappers do exactly that). They talk to AWS through boto3 only, so ``AWS_ENDPOINT_URL`` (and the per-service
``AWS_ENDPOINT_URL_<SERVICE>``) point them at a test server, and to Docker through the ``docker`` CLI.

Conventions shared by every command:
- what it is doing goes to stderr, prefixed with the command's name; the result (image URIs, S3 URIs, job
  and endpoint names, a response body) goes to stdout, so ``X=$(scripts/....sh ...)`` captures it;
- every check that needs no change (arguments, region, credentials, role ARN, buckets, images) runs before
  the first call that creates or changes anything, and fails with exit code 2 and a sentence saying what to
  fix; a failure after that (a job or endpoint that failed, an AWS error) exits 1.
"""
