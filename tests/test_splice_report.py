"""The splice section of an analysis report: written once, replaced on a rerun, the sections
after it kept."""

from usae_jax.analysis import splice_report


def _report(kl_self: float) -> dict:
    cond = lambda kl: {"kl": kl, "kl_recovered": 1 - kl / 2.0, "agreement": 0.5}  # noqa: E731
    row = {"source": "a", "target": "b", "self": cond(kl_self), "cross": cond(1.0),
           "mean": cond(2.0), "baseline": cond(1.5), "clean": cond(0.0)}  # fmt: skip
    return {
        "usae_step": 7,
        "images": 4,
        "table": [row],
        "effects": {
            "agreement": {"universal": {"real": 0.25, "control": 0.125}},
            "groups": {"universal": [1, 2, 3]},
        },
        "seconds": {"splice": 3.0, "total": 5.0},
    }


def test_section_is_added_then_replaced(tmp_path):
    report_md = tmp_path / "report.md"
    report_md.write_text("# Report\n\n## R²\nnumbers\n")
    splice_report.add_to_report(str(report_md), splice_report.markdown_section(_report(0.5)))
    first = report_md.read_text()
    assert first.startswith("# Report\n\n## R²\nnumbers\n\n## Splicing")
    assert "0.750" in first  # KL recovered of self: 1 - 0.5 / 2
    assert "universal    3 concepts: real 0.250, random directions of equal norm 0.125" in first
    # A later section survives a rerun, which replaces the splice section in place.
    report_md.write_text(first + "\n## Later\nkept\n")
    section = splice_report.markdown_section(_report(1.0), figure="splice.png")
    splice_report.add_to_report(str(report_md), section)
    second = report_md.read_text()
    assert second.count(splice_report.SECTION_TITLE) == 1
    assert "0.750" not in second and "0.500" in second
    assert second.endswith("## Later\nkept\n") and "![splice](splice.png)" in second
