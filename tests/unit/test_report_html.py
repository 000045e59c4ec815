"""The HTML report: escaping (T44), plots as inert inline SVG, offline, bounded."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from auditor.certify.verdict import Verdict, VerifyResult
from auditor.compare.difference import Difference
from auditor.report import plots
from auditor.report.html import common_folder, divergence_steps, render_html, safe_url

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "verify"
HOSTILE = "<script>alert(1)</script>"
TEMPLATE_SYNTAX = "{{ 7*7 }}"


def load(name: str) -> VerifyResult:
    return VerifyResult.model_validate_json((FIXTURES / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def failed_html() -> str:
    return render_html(load("not_reproduced"), original_url="https://ci.example/runs/1",
                       rerun_url="javascript:alert(1)")


def visible_text(html: str) -> str:
    """The page without its inline SVG plots (whose text matplotlib escapes itself)."""
    return re.sub(r"<svg\b.*?</svg>", "", html, flags=re.S)


def test_hostile_metric_name_is_escaped(failed_html: str) -> None:
    assert HOSTILE not in failed_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in visible_text(failed_html)
    assert "<script" not in failed_html.lower()


def test_template_syntax_in_notes_stays_literal(failed_html: str) -> None:
    assert f"run note: {TEMPLATE_SYNTAX}" in failed_html
    assert "run note: 49" not in failed_html


def test_html_in_names_and_causes_is_text(failed_html: str) -> None:
    assert "<b>mlp</b>" not in failed_html
    assert "&lt;b&gt;mlp&lt;/b&gt;" in failed_html
    assert "<img" not in failed_html and "&lt;img src=x onerror=alert(1)&gt;" in failed_html


def test_javascript_url_is_dropped_and_https_kept(failed_html: str) -> None:
    assert 'href="https://ci.example/runs/1"' in failed_html
    assert "javascript:" not in failed_html
    assert safe_url("JavaScript:alert(1)") is None
    assert safe_url("data:text/html,x") is None
    assert safe_url("../runs/1.html") == "../runs/1.html"
    assert safe_url("http://[::1") is None


def test_page_is_offline_and_scriptless(failed_html: str) -> None:
    assert "default-src 'none'" in failed_html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", visible_text(failed_html)
                         .replace('href="https://ci.example/runs/1"', ""))
    assert "<link" not in failed_html and "@import" not in failed_html


def test_plots_are_inline_svg_per_metric_and_tensor_chart(failed_html: str) -> None:
    # 4 metrics + the per-tensor chart
    assert failed_html.count("<svg") == 5
    assert "first divergence: step 0" in failed_html
    assert "max ULP distance" in failed_html
    assert "<?xml" not in failed_html and "<!DOCTYPE svg" not in failed_html


def test_hostile_names_inside_svg_are_xml_escaped(failed_html: str) -> None:
    svgs = re.findall(r"<svg\b.*?</svg>", failed_html, flags=re.S)
    tensor_chart = next(s for s in svgs if "max ULP distance" in s)
    assert "$\\alpha$ &lt;script&gt;alert(1)&lt;/script&gt;" in tensor_chart
    assert TEMPLATE_SYNTAX in tensor_chart
    for svg in svgs:
        plots.check_svg(svg)


def test_first_divergence_metric_is_plotted_first(failed_html: str) -> None:
    headings = re.findall(r"<h3>(.*?)</h3>", failed_html)
    assert headings[0] == "loss"


def test_divergence_steps_from_differences() -> None:
    steps = divergence_steps(load("not_reproduced"))
    assert steps == {"loss": 0, "accuracy": 1, HOSTILE: 1, "grad_norm": 0}


def test_causes_come_before_differences(failed_html: str) -> None:
    assert failed_html.index('id="causes"') < failed_html.index('id="differences"')
    assert failed_html.index("PYTHONHASHSEED") < failed_html.index("environment/seeds")


def test_verdict_banner_classes() -> None:
    assert 'class="banner failed"' in render_html(load("not_reproduced"))
    assert 'class="banner bitwise"' in render_html(load("bitwise"))
    assert 'class="banner tolerance"' in render_html(load("within_tolerance"))


def test_bitwise_report_has_curves_but_no_tensor_chart() -> None:
    html = render_html(load("bitwise"))
    assert html.count("<svg") == 2
    assert 'id="tensors"' not in html


def test_rendering_is_deterministic() -> None:
    result = load("within_tolerance")
    assert render_html(result) == render_html(result)


def test_report_stays_small(failed_html: str) -> None:
    assert len(failed_html.encode()) < 400_000


def test_no_metrics_no_differences_renders() -> None:
    result = VerifyResult(original_run="01jd0x8k6m2q3r4s5t6v7w8x9y", original_name="x",
                          verdict=Verdict(level="could-not-verify", notes=["no engine"]),
                          started_at=datetime(2026, 1, 1, tzinfo=UTC))
    html = render_html(result)
    assert 'class="banner error"' in html and "No metric series" in html
    assert "(none)" in html


def test_nan_only_series_and_huge_series_do_not_crash() -> None:
    long = [(i, float(i % 7)) for i in range(50_000)]
    nan_only = [(0, float("nan")), (1, float("inf"))]
    svg = plots.metric_curves_svg(long, nan_only, 3, salt="x")
    assert svg.startswith("<svg") and "2 NaN/Inf" in svg
    assert len(svg) < 300_000


def test_dollar_signs_never_reach_mathtext() -> None:
    bars = [plots.TensorBar("$x^$", 1e-3, 4.0), plots.TensorBar("a_{b}$", 2e-3, None)]
    svg = plots.tensor_bars_svg(bars, salt="t")
    assert "$x^$" in svg


def test_check_svg_refuses_active_content() -> None:
    for bad in ('<svg><script>alert(1)</script></svg>',
                '<svg><g onload="alert(1)"></g></svg>',
                '<svg><a href="javascript:alert(1)"><text>x</text></a></svg>',
                '<svg><foreignObject><div/></foreignObject></svg>',
                '<div></div>'):
        with pytest.raises(plots.UnsafeSvg):
            plots.check_svg(bad)
    assert plots.check_svg("<svg><text>x onerror=alert(1)</text></svg>")


def test_svg_ids_differ_between_plots(failed_html: str) -> None:
    clip_ids = re.findall(r'<clipPath id="([^"]+)"', failed_html)
    assert len(clip_ids) == len(set(clip_ids))


def test_tensor_labels_drop_the_shared_file_prefix(failed_html: str) -> None:
    assert "tensors of <code>outputs/model.safetensors/</code>" in failed_html
    assert common_folder(["a/b/c", "a/b/d"]) == "a/b/"
    assert common_folder(["ab/c", "ax/d"]) == ""


def test_long_difference_tables_are_capped() -> None:
    diffs = [Difference(where=f"environment/env_vars/V{i}", kind="changed", left="a", right="b")
             for i in range(450)]
    result = load("bitwise").model_copy(update={"verdict": Verdict(
        level="not-reproduced", differences={"environment": diffs})})
    html = render_html(result)
    assert "250 more rows not shown" in html
    assert "450 differences, 450 beyond tolerance" in html
