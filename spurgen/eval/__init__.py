"""Evaluation: metrics (METHOD.md, 'Evaluation'), batched prediction over image sets, and reports."""
