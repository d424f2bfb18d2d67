"""``ladd bench``: every method on the same teacher, data and budget, evaluated the same way (ladd.bench.run),
reported as one table, plots, a grid and JSON (ladd.bench.report)."""
