"""Human review of images: a local web page (app.py, page.py), answers in SQLite (store.py), blinded study
mode (blind.py), and the export of results (results.py). docs/review.md explains how to use it."""
