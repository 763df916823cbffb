"""``skinlesion serve``: the REST service over :class:`skinlesion.predict.Predictor`, one concern per module.

- :mod:`skinlesion.serve.settings` the service's options, checked in one sentence each; how cores become threads
- :mod:`skinlesion.serve.keys`     API keys: salted hashes on disk, constant-time checks, ``--new-key``
- :mod:`skinlesion.serve.limits`   what a request may cost: the streamed body limit, the per-key rate limit
- :mod:`skinlesion.serve.metrics`  the Prometheus counters and histograms behind ``GET /metrics``
- :mod:`skinlesion.serve.refusals` every refusal as JSON with one sentence (and the field it names)
- :mod:`skinlesion.serve.forms`    reading an analysis request: the uploads and their patient data
- :mod:`skinlesion.serve.service`  one worker's state: the predictor, the bounded analysis pool, draining on SIGTERM
- :mod:`skinlesion.serve.api`      the FastAPI application: the routes, who may call them
- :mod:`skinlesion.serve.runner`   running it on uvicorn, one or several worker processes
- :mod:`skinlesion.serve.protocol` connection limits: header and body deadlines, the connection cap, lingering close
- :mod:`skinlesion.serve.client`   the client behind ``skinlesion predict --server URL``

Nothing here is imported by ``import skinlesion.cli``: fastapi, uvicorn and httpx load inside the verbs.
"""
