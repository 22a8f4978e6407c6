"""Reporting: overlays, plotly figures, tables and the exported records."""
