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
      if (runs[i].id === id) {
        return runs[i].label || (runs[i].name + " · " + id.slice(-6));
      }
    }
    return id.slice(-6);
  }
  function smooth(values, weight) {
    /* TensorBoard's debiased exponential moving average; gaps stay gaps */
    if (!weight) { return values; }
    var last = 0, n = 0;
    return values.map(function (v) {
      if (v === null || !isFinite(v)) { return null; }
      last = last * weight + (1 - weight) * v; n += 1;
      return last / (1 - Math.pow(weight, n));
    });
  }
  function positive(v, log) { return log && !(v > 0) ? null : v; }
  function pairs(steps, values, log) {
    return steps.map(function (x, j) { return [x, positive(values[j], log)]; });
  }
  function runSeries(curves, metric, runs, opts) {
    return (curves[metric] || []).map(function (s) {
      var index = runs.findIndex(function (r) { return r.id === s.run; });
      return { name: label(runs, s.run), type: "line", showSymbol: false, sampling: "none",
               color: COLORS[(index < 0 ? 0 : index) % 10],
               lineStyle: s.dashed ? { type: "dashed" } : undefined,
               data: pairs(s.steps, smooth(s.values, opts.smoothing), opts.log) };
    });
  }
  function bandOf(members, group) {
    /* mean ± std (sample) of a group's curves on its first curve's steps, the others
       interpolated linearly onto them, never extrapolated past a curve's ends */
    var base = members[0].steps, per = base.map(function () { return []; });
    members.forEach(function (m) {
      var xs = [], ys = [];
      m.steps.forEach(function (x, j) {
        var v = m.values[j];
        if (v !== null && isFinite(v)) { xs.push(x); ys.push(v); }
      });
      if (!xs.length) { return; }
      var k = 0;
      base.forEach(function (x, i) {
        if (x < xs[0] || x > xs[xs.length - 1]) { return; }
        while (k < xs.length - 1 && xs[k + 1] <= x) { k += 1; }
        var v = ys[k];
        if (xs[k] !== x && k < xs.length - 1) {
          v = ys[k] + (ys[k + 1] - ys[k]) * (x - xs[k]) / (xs[k + 1] - xs[k]);
        }
        per[i].push(v);
      });
    });
    var out = { group: group, n: members.length, steps: [], mean: [], std: [] };
    per.forEach(function (vals, i) {
      if (!vals.length) { return; }
      var mean = vals.reduce(function (a, b) { return a + b; }, 0) / vals.length, sq = 0;
      vals.forEach(function (v) { sq += (v - mean) * (v - mean); });
      out.steps.push(base[i]); out.mean.push(mean);
      out.std.push(vals.length > 1 ? Math.sqrt(sq / (vals.length - 1)) : 0);
    });
    return out;
  }
  function groupSeries(curves, metric, groups, opts) {
    var out = [], bands = [], byRun = {};
    (curves[metric] || []).forEach(function (s) { byRun[s.run] = s; });
    groups.forEach(function (g, i) {
      var members = g.runs.map(function (r) { return byRun[r]; })
        .filter(function (m) { return m; });
      if (members.length) { bands.push(bandOf(members, i)); }
    });
    bands.sort(function (a, b) { return a.group - b.group; });
    bands.forEach(function (b) {
      var name = groups[b.group].label + " (n=" + b.n + ")";
      var color = COLORS[b.group % 10], stack = "band" + b.group;
      var mean = smooth(b.mean, opts.smoothing);
      var lower = mean.map(function (m, j) { return m === null ? null : m - b.std[j]; });
      out.push({ name: name, type: "line", showSymbol: false, sampling: "none", color: color,
                 data: pairs(b.steps, mean, opts.log) });
      if (b.n > 1) {
        out.push({ name: name, type: "line", showSymbol: false, stack: stack, silent: true,
                   lineStyle: { opacity: 0 }, color: color, tooltip: { show: false },
                   data: pairs(b.steps, lower, opts.log) });
        out.push({ name: name, type: "line", showSymbol: false, stack: stack, silent: true,
                   lineStyle: { opacity: 0 }, color: color, areaStyle: { opacity: 0.18 },
                   tooltip: { show: false },
                   data: b.steps.map(function (x, j) { return [x, 2 * b.std[j]]; }) });
      }
    });
    return out;
  }
  function drawCurves(c, curves, metric, runs, opts) {
    opts = opts || {};
    var grouped = opts.grouped && opts.groups;
    var series = grouped ? groupSeries(curves, metric, opts.groups, opts)
                         : runSeries(curves, metric, runs, opts);
    var marks = opts.divergence && opts.divergence[metric];
    if (marks && series.length) {
      series[0].markLine = { symbol: "none", silent: true, lineStyle: { color: "#b3261e" },
                             label: { formatter: "first divergence: step " + marks.step },
                             data: [{ xAxis: marks.step }] };
    }
    c.setOption({ animation: false, tooltip: { trigger: "axis" }, legend: { type: "scroll" },
                  xAxis: { type: "value", name: "step" },
                  yAxis: opts.log ? { type: "log" } : { type: "value", scale: true },
                  grid: { left: 60, right: 20 }, series: series }, true);
    var total = 0;
    (curves[metric] || []).forEach(function (s) { total += s.steps.length; });
    var names = [];
    series.forEach(function (s) { if (names.indexOf(s.name) < 0) { names.push(s.name); } });
    var dom = c.getDom();
    dom.setAttribute("data-points", String(total));
    dom.setAttribute("data-series", String(names.length));
    dom.setAttribute("data-legend", names.join("|"));
    dom.setAttribute("data-mode", grouped ? "grouped" : "runs");
    dom.setAttribute("data-y", opts.log ? "log" : "value");
    dom.setAttribute("data-smoothing", String(opts.smoothing || 0));
    dom.setAttribute("data-divergence", marks ? String(marks.step) : "");
  }
  function curvesPanel(d, runs) {
    var c = chart("curves"), select = el("curve-metric");
    if (!c || !select) { return null; }
    var names = Object.keys(d.curves);
    var chosen = d.metric && d.curves[d.metric] ? d.metric : names[0];
    var group = el("group-seeds"), smoothing = el("smoothing"), log = el("log-y");
    var panel = { chart: c, select: select, curves: d.curves, runs: runs, extra: {} };
    panel.opts = function () {
      var o = { smoothing: smoothing ? Number(smoothing.value) : 0,
                log: !!(log && log.checked) };
      if (group && group.checked && d.groups) { o.grouped = true; o.groups = d.groups; }
      Object.keys(panel.extra).forEach(function (k) { o[k] = panel.extra[k]; });
      return o;
    };
    panel.draw = function () {
      if (select.value) { drawCurves(c, panel.curves, select.value, panel.runs, panel.opts()); }
    };
    options(select, names, chosen);
    panel.draw();
    select.addEventListener("change", panel.draw);
    [group, log].forEach(function (n) { if (n) { n.addEventListener("change", panel.draw); } });
    if (smoothing) {
      smoothing.addEventListener("input", function () {
        el("smoothing-value").textContent = smoothing.value;
        panel.draw();
      });
    }
    return panel;
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
    var values = p.data.map(function (row) { return row[row.length - 1]; })
      .filter(function (v) { return v !== null; });
    var option = { animation: false, parallelAxis: dims,
                   parallel: { left: 60, right: 140 },
                   series: [{ type: "parallel", lineStyle: { width: 2, opacity: 0.7 },
                              data: p.data }] };
    if (p.metric && values.length) {
      option.visualMap = { type: "continuous", dimension: p.dims.length, right: 10, top: 30,
                           min: Math.min.apply(null, values),
                           max: Math.max.apply(null, values), calculable: true,
                           text: [p.metric, ""], precision: 4,
                           inRange: { color: ["#440154", "#31688e", "#35b779", "#fde725"] } };
    }
    c.setOption(option);
    c.getDom().setAttribute("data-axes", p.dims.map(function (d) { return d.name; }).join(","));
    c.getDom().setAttribute("data-color", option.visualMap ? p.metric : "");
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
    var d = data(), runs = [{ id: d.id, label: d.original ? "rerun" : "this run" }];
    if (d.original) { runs.push({ id: d.original, label: "original" }); }
    var panel = curvesPanel({ curves: d.curves, metric: null }, runs);
    function count(curves) {
      var n = 0;
      Object.keys(curves).forEach(function (k) {
        curves[k].forEach(function (s) { if (s.run === d.id) { n += s.total; } });
      });
      el("points").textContent = String(n);
    }
    function diverged(divergence) {
      var node = el("divergence");
      if (!node) { return; }
      var keys = Object.keys(divergence || {});
      var shown = panel && divergence[panel.select.value] ? panel.select.value : keys[0];
      node.textContent = shown ? "first divergence: " + shown + " at step " +
        divergence[shown].step + " (original " + divergence[shown].original + ", rerun " +
        divergence[shown].rerun + ")" : "no divergence so far";
      node.className = shown ? "diverged" : "";
      if (panel) { panel.extra.divergence = divergence; }
    }
    count(d.curves);
    diverged(d.divergence);
    if (panel) { panel.draw(); }
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
            panel.curves = fresh.curves;
          }
          diverged(fresh.divergence);
          if (panel) { panel.draw(); }
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
