"""metricsscrape."""
