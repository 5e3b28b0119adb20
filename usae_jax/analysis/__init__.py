"""Universality analysis of a trained USAE (spec.md section 5).

Modules: ``statistics`` (one streamed pass: firing, co-firing, energy, dead concepts, R², top
examples), ``universality`` (entropy, co-fire proportion, Pearson r, planted-concept AUROC),
``compare`` (independent-SAE baseline with Hungarian matching), ``controls`` (broken pairing and
noise controls), ``examples`` (top-activating tokens and image heatmaps), ``figures`` (PNGs) and
``report`` (everything together: ``analysis.json`` + ``report.md``); ``trained`` (restore a run
for analysis), ``cam`` / ``cam_output`` (coordinated activation maximization) and ``transfer``
(concept search, steering and erasure across models).
"""
