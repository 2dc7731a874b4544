"""The load bench, outside the service's core: `python -m fer_async.bench --help`.

cli (options, runs, output), load (the WebSocket clients and what they measured), harness (the
real server in this process or as a subprocess; also used by the tests), raw (the compute
bound without a server), report (percentiles, Prometheus parsing, the table). The frames come
from fer_async.synthetic.
"""
