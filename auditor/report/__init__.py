"""Reports of a verification: terminal (rich), HTML (jinja2 + inline SVG plots), JUnit XML
and Markdown (job summaries, PR comments).

Each renderer reads only ``VerifyResult`` values (``auditor.certify.verdict``) and returns text
(or prints it); none touches the store. Import the submodule you need:
``report.html.render_html``, ``report.markdown.render_markdown``,
``report.junit.render_junit``, ``report.terminal.print_result``. The HTML renderer pulls
in matplotlib, so it is not imported here.
"""
