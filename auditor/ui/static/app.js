/* auditor dashboard: draws the charts from the page's JSON data (no inline script, no
   eval; every text goes in through textContent or ECharts, which escapes it). */
(function () {
  "use strict";
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  function el(id) { return document.getElementById(id); }
  function data() {
    var node = el("data");
    return node ? JSON.parse(node.textContent) : null;
  }
  function chart(id) {
    var node = el(id);
    if (!node || typeof echarts === "undefined") { return null; }
    return echarts.init(node, null, { renderer: "canvas" });
  }
  function options(select, names, chosen) {
    select.textContent = "";
    names.forEach(function (n) {
      var o = document.createElement("option");
      o.value = n; o.textContent = n; if (n === chosen) { o.selected = true; }
      select.appendChild(o);
    });
  }
  function label(runs, id) {
    for (var i = 0; i < runs.length; i++) {
      if (runs[i].id === id) { return runs[i].name + " · " + id.slice(-6); }
    }
    return id.slice(-6);
  }
  function drawCurves(c, curves, metric, runs) {
    var series = (curves[metric] || []).map(function (s, i) {
      return { name: label(runs, s.run), type: "line", showSymbol: false, sampling: "none",
               color: COLORS[runs.findIndex(function (r) { return r.id === s.run; }) % 10],
               data: s.steps.map(function (x, j) { return [x, s.values[j]]; }) };
    });
    c.setOption({ animation: false, tooltip: { trigger: "axis" }, legend: { type: "scroll" },
                  xAxis: { type: "value", name: "step" }, yAxis: { type: "value", scale: true },
                  grid: { left: 60, right: 20 }, series: series }, true);
    var total = 0;
    (curves[metric] || []).forEach(function (s) { total += s.steps.length; });
    c.getDom().setAttribute("data-points", String(total));
    c.getDom().setAttribute("data-series", String(series.length));
  }
  function curvesPanel(d, runs) {
    var c = chart("curves"), select = el("curve-metric");
    if (!c || !select) { return null; }
    var names = Object.keys(d.curves);
    var chosen = d.metric && d.curves[d.metric] ? d.metric : names[0];
    options(select, names, chosen);
    if (chosen) { drawCurves(c, d.curves, chosen, runs); }
    select.addEventListener("change", function () { drawCurves(c, d.curves, select.value, runs); });
    return { chart: c, select: select };
  }
  function parallelPanel(p) {
    var c = chart("parallel");
    if (!c) { return; }
    var dims = p.dims.map(function (d, i) {
      var axis = { dim: i, name: d.name };
      if (!d.numeric) { axis.type = "category"; axis.data = d.categories; }
      return axis;
    });
    dims.push({ dim: p.dims.length, name: p.metric || "metric" });
    c.setOption({ animation: false, parallelAxis: dims,
                  parallel: { left: 60, right: 80 },
                  series: [{ type: "parallel", lineStyle: { width: 2, opacity: 0.6 },
                             data: p.data }] });
    c.getDom().setAttribute("data-axes", p.dims.map(function (d) { return d.name; }).join(","));
  }
  function scatterPanel(p) {
    var c = chart("scatter"), select = el("scatter-param");
    if (!c || !select) { return; }
    var names = p.dims.map(function (d) { return d.name; });
    function draw(name) {
      var i = names.indexOf(name), d = p.dims[i];
      var points = p.data.map(function (row) { return [row[i], row[row.length - 1]]; });
      c.setOption({ animation: false, tooltip: {},
                    xAxis: d.numeric ? { type: "value", name: name, scale: true }
                                     : { type: "category", name: name, data: d.categories },
                    yAxis: { type: "value", name: p.metric || "", scale: true },
                    series: [{ type: "scatter", symbolSize: 10, data: points }] }, true);
    }
    options(select, names, names[0]);
    if (names.length) { draw(names[0]); }
    select.addEventListener("change", function () { draw(select.value); });
  }
  function importancePanel(imp) {
    var c = chart("importance");
    if (!c || !imp || !imp.params.length) { return; }
    var params = imp.params.slice().reverse();
    c.setOption({ animation: false, tooltip: {}, grid: { left: 120, right: 30 },
                  xAxis: { type: "value", name: "permutation importance" },
                  yAxis: { type: "category", data: params.map(function (p) { return p.name; }) },
                  series: [{ type: "bar", data: params.map(function (p) {
                    return { value: p.permutation,
                             itemStyle: { color: p.stands_out === false ? "#bbbbbb" : "#1f77b4" } };
                  }) }] });
    c.getDom().setAttribute("data-order", imp.params.map(function (p) { return p.name; }).join(","));
  }
  function comparePage() {
    var d = data();
    document.querySelectorAll(".swatch").forEach(function (s) {
      s.style.backgroundColor = COLORS[Number(s.getAttribute("data-index")) % 10];
    });
    var button = el("show-all"), table = el("diff");
    if (button && table) {
      button.addEventListener("click", function () {
        var all = table.classList.toggle("show-all");
        table.classList.toggle("diff-only", !all);
        button.textContent = all ? "differences only" : "show all";
      });
    }
    curvesPanel(d, d.runs);
    parallelPanel(d.parallel);
    scatterPanel(d.parallel);
    importancePanel(d.importance);
  }
  function runPage() {
    var d = data(), runs = [{ id: d.id, name: "" }];
    var panel = curvesPanel({ curves: d.curves, metric: null }, runs);
    function count(curves) {
      var n = 0;
      Object.keys(curves).forEach(function (k) {
        curves[k].forEach(function (s) { n += s.total; });
      });
      el("points").textContent = String(n);
    }
    count(d.curves);
    if (d.status !== "running") { return; }
    var timer = setInterval(function () {
      fetch("/api/runs/" + encodeURIComponent(d.id) + "/curves", { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (fresh) {
          count(fresh.curves);
          var status = el("status");
          status.textContent = fresh.status; status.className = "status " + fresh.status;
          if (panel) {
            var names = Object.keys(fresh.curves);
            var chosen = panel.select.value || names[0];
            options(panel.select, names, chosen);
            if (chosen) { drawCurves(panel.chart, fresh.curves, chosen, runs); }
          }
          if (fresh.status !== "running") { clearInterval(timer); }
        })
        .catch(function () { /* the next tick tries again */ });
    }, 1000);
  }
  function runsPage() {
    var form = el("select"), button = el("compare");
    if (!form || !button) { return; }
    function update() {
      var n = form.querySelectorAll("input[name=run]:checked").length;
      button.disabled = n < 2;
      button.textContent = n ? "compare " + n : "compare";
    }
    form.addEventListener("change", update);
    update();
    var metric = el("metric");
    if (metric) { metric.addEventListener("change", function () { el("filter").submit(); }); }
  }
  var page = document.body.getAttribute("data-page");
  if (page === "compare") { comparePage(); }
  if (page === "run") { runPage(); }
  if (page === "runs") { runsPage(); }
  window.addEventListener("resize", function () {
    document.querySelectorAll(".chart").forEach(function (n) {
      var c = typeof echarts !== "undefined" && echarts.getInstanceByDom(n);
      if (c) { c.resize(); }
    });
  });
  document.body.setAttribute("data-ready", "1");
}());
