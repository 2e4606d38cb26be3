"""The pieces every perf entry point is built from: servers, host, variants, workloads, perf_analyzer,
statistics, points, summaries, sampling and the results record."""
