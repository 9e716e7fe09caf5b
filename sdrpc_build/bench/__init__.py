"""The bench wing: ``link`` measures a server's link with the protocol itself (test data
from ``pattern``, failures as ``failures.BenchError``, asked for by ``options``);
``maths`` turns the samples into throughput, latency and upload-time estimates."""

__all__: list[str] = []
