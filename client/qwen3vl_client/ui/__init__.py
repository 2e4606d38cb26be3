"""The search page: ``qwen3vl ui --index DIR`` serves a small web page over an index (``app``), with
thumbnails and snippets of the results (``previews``) read from the index's source (``corpus``)."""
