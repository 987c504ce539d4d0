"""`flaxbert serve`: a serving export (or a bundle, exported on the fly) behind HTTP, with
dynamic batching.

app.py      the starlette application: routes, request checks and limits, errors, access log
answers.py  per head: a request's inputs as model rows, the outputs as offline inference's
batcher.py  requests gathered into length-bucketed batches of a few compiled shapes
metrics.py  GET /metrics (prometheus_client, a registry of its own)
server.py   `serve(path, host, port, ...)`: opens the model, listens (uvicorn), drains on
            SIGTERM
"""
