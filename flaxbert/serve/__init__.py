"""`flaxbert serve`: a serving export (or a bundle, exported on the fly) behind HTTP, with
dynamic batching.

app.py           the starlette application: routes, request checks and limits, errors, the
                 access log; `build_app(DIR or model, **options)`
answers.py       per head: a request's inputs as model rows, the outputs as offline inference's
batcher.py       requests gathered into length-bucketed batches of a few compiled shapes
metrics.py       GET /metrics (prometheus_client, a registry of its own)
model_source.py  an export loaded, or a bundle exported to a temporary directory and loaded
server.py        `serve(DIR, host, port, **options)`: binds, serves (uvicorn), drains on
                 SIGTERM
"""
