"""The concept explorer: a static site (no server, no CDN) and a JSON export of every concept.

``measures`` (firing histograms, co-firing partners, nearest concepts, index columns),
``media`` (image crops with heatmaps, CAM images, text contexts), ``site`` (the JSON documents,
schema in ``docs/explorer.md``, and the site writer), ``build`` (a trained run to a site) and
``browser`` (headless Chromium: screenshots and load times).
"""
