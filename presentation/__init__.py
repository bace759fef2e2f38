"""Presentation: charts, the Markdown and HTML reports, compare. Reads stored runs only."""
