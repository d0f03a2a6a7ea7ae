// The manager's live dashboard: polls GET /api/cluster every second and renders it.
//
// Static, dependency-free, no external resources. Every server string reaches the DOM through
// textContent or setAttribute (never innerHTML), and every field may be missing: the
// accessors below turn anything unexpected into an empty value instead of throwing.
//
// Contract with tests (tests/dashboard/dashboard-test.mjs):
//   body[data-loaded="true"]     after the first successful render
//   [data-runner="<name>"]       one <tr> per runner, and nothing else carries the attribute
//   .shard[data-shard][data-owner] one cell per shard, in [data-group="<name>"]
(() => {
  'use strict';

  const API = '/api/cluster';
  const POLL_MS = 1000;
  const STALE_MS = 3000;
  const FETCH_TIMEOUT_MS = 5000;
  const HISTORY = 60;
  const MAX_EVENTS = 50;
  const MAX_DEAD = 20;
  const MAX_SHARDS_PER_GROUP = 65536;
  const MOVED_MS = 2000;

  // ---- defensive accessors -------------------------------------------------------------------
  const arr = (v) => (Array.isArray(v) ? v : []);
  const obj = (v) => (v && typeof v === 'object' && !Array.isArray(v) ? v : {});
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const str = (v) => (typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' ? String(v) : '');
  const sum = (values) => {
    let total = null;
    for (const v of values) if (v !== null) total = (total ?? 0) + v;
    return total;
  };

  // ---- DOM helpers (textContent only) --------------------------------------------------------
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    applyProps(el, props);
    append(el, children);
    return el;
  }
  const SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, props, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    applyProps(el, props);
    append(el, children);
    return el;
  }
  function applyProps(el, props) {
    if (!props) return;
    for (const [k, v] of Object.entries(props)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k === 'text') el.textContent = v;
      else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = dv;
      else if (k === 'style') for (const [p, pv] of Object.entries(v)) el.style.setProperty(p, pv);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
  }
  const $ = (id) => document.getElementById(id);
  const replace = (el, ...children) => {
    if (!el) return;
    el.replaceChildren();
    append(el, children);
  };

  // ---- formatting ----------------------------------------------------------------------------
  const DASH = '—';
  const pad = (n) => String(n).padStart(2, '0');
  function fmtTime(ms) {
    if (num(ms) === null) return DASH;
    const d = new Date(ms);
    const now = new Date();
    const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (d.toDateString() === now.toDateString()) return hms;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms}`;
  }
  function fmtAgo(ms) {
    const sec = Math.max(0, Math.round(ms / 1000));
    if (sec < 90) return `${sec} s`;
    if (sec < 5400) return `${Math.round(sec / 60)} min`;
    return `${Math.round(sec / 3600)} h`;
  }
  function fmtRate(v) {
    if (v === null) return DASH;
    const a = Math.abs(v);
    if (a === 0) return '0';
    if (a < 10) return v.toFixed(2);
    if (a < 1000) return v.toFixed(1);
    if (a < 1e4) return `${(v / 1e3).toFixed(2)}k`;
    if (a < 1e6) return `${(v / 1e3).toFixed(1)}k`;
    if (a < 1e9) return `${(v / 1e6).toFixed(2)}M`;
    return `${(v / 1e9).toFixed(2)}G`;
  }
  function fmtInt(v) {
    if (v === null) return DASH;
    if (Math.abs(v) >= 1e7) return fmtRate(v);
    return Math.round(v).toLocaleString('en-US');
  }
  function fmtMs(v) {
    if (v === null) return DASH;
    if (v < 1) return `${Math.round(v * 1000)} µs`;
    if (v < 10) return `${v.toFixed(2)} ms`;
    if (v < 100) return `${v.toFixed(1)} ms`;
    return `${Math.round(v).toLocaleString('en-US')} ms`;
  }
  const fmtMiB = (bytes) =>
    bytes === null ? DASH : (bytes / 1048576).toLocaleString('en-US', { minimumFractionDigits: 1, maximumFractionDigits: 1 });
  const fmtCores = (v) => (v === null ? DASH : v.toFixed(2));

  // ---- state kept across polls ---------------------------------------------------------------
  const token = new URLSearchParams(location.search).get('token') || '';
  const state = {
    colors: new Map(), // runner name -> colour, assigned on first sight, never reused
    groups: new Map(), // group name -> { el, grid, legend, info, cells: [] }
    history: new Map(), // series key -> number[] (last HISTORY samples)
    expanded: new Map(), // entity type name -> bool
    lastOk: 0,
    lastServerTime: null,
    failing: false,
    loaded: false,
  };

  // Well-separated colours for a dark background; past the palette, golden-angle hues.
  const PALETTE = ['#4f9cf9', '#f5a524', '#3fcf8e', '#ef5d8f', '#a07cf8', '#2ec5d3', '#f37c3e', '#c3d94e',
    '#d86cdc', '#7a8cff', '#e9c349', '#5fcaa5'];
  function colorOf(name) {
    let c = state.colors.get(name);
    if (!c) {
      const i = state.colors.size;
      c = i < PALETTE.length ? PALETTE[i] : `hsl(${Math.round((i * 137.508) % 360)} 70% 62%)`;
      state.colors.set(name, c);
    }
    return c;
  }

  function record(key, value) {
    let series = state.history.get(key);
    if (!series) state.history.set(key, (series = []));
    series.push(value);
    if (series.length > HISTORY) series.splice(0, series.length - HISTORY);
    return series;
  }

  function sparkline(series, cls) {
    const w = 96, hgt = 22;
    const svg = s('svg', {
      class: `spark ${cls || ''}`, width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: 'none', 'aria-hidden': 'true',
    });
    svg.append(s('line', { class: 'base', x1: 0, y1: hgt - 0.5, x2: w, y2: hgt - 0.5 }));
    if (series.filter((v) => v !== null).length < 2) return svg;
    const values = series.map((v) => (v === null ? 0 : v));
    const max = Math.max(...values, 1e-9);
    const step = w / (HISTORY - 1);
    const x0 = w - (values.length - 1) * step;
    const pts = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(hgt - 2 - (v / max) * (hgt - 4)).toFixed(1)}`);
    svg.append(
      s('polygon', { class: 'area', points: `${x0.toFixed(1)},${hgt} ${pts.join(' ')} ${w},${hgt}` }),
      s('polyline', { class: 'line', points: pts.join(' ') }),
    );
    return svg;
  }

  // ---- model: normalise the response once ----------------------------------------------------
  function model(data) {
    const runners = arr(data.runners).map((r, i) => {
      const ro = obj(r);
      const m = obj(ro.metrics);
      const scraped = ro.metrics !== undefined && m.ok !== false;
      return {
        name: str(ro.name) || `runner #${i}`,
        address: str(ro.address),
        admin: str(ro.admin_address),
        healthy: ro.healthy === true,
        healthKnown: typeof ro.healthy === 'boolean',
        shards: num(ro.shards),
        version: str(ro.version),
        plugins: arr(ro.plugins).map((p) => ({
          name: str(obj(p).name),
          version: str(obj(p).version),
          types: arr(obj(p).entity_types).map(str).filter(Boolean),
        })).filter((p) => p.name),
        metricsPresent: ro.metrics !== undefined && ro.metrics !== null,
        metricsOk: scraped,
        metricsError: str(m.error),
        cpu: num(m.cpu_cores),
        rss: num(m.rss_bytes),
        active: num(m.active_entities),
        mailbox: num(m.mailbox_depth),
        calls: num(m.calls_per_s),
        errors: num(m.errors_per_s),
        connections: num(m.connections),
        restarts: num(m.plugin_restarts),
      };
    });
    const groups = arr(data.groups).map((g, i) => {
      const go = obj(g);
      const owners = arr(go.owners);
      let count = num(go.shards);
      if (count === null || count < 0) count = owners.length;
      count = Math.min(Math.floor(count), MAX_SHARDS_PER_GROUP);
      const names = new Array(count);
      for (let k = 0; k < count; k++) {
        const o = num(owners[k]);
        names[k] = o !== null && o >= 0 && o < runners.length && Number.isInteger(o) ? runners[o].name : 'none';
      }
      return { name: str(go.name) || `group-${i}`, count, owners: names };
    });
    // Shard counts per runner when the server leaves them out.
    const counted = new Map();
    for (const g of groups) for (const o of g.owners) if (o !== 'none') counted.set(o, (counted.get(o) || 0) + 1);
    for (const r of runners) if (r.shards === null) r.shards = counted.get(r.name) || 0;

    const types = arr(data.entity_types).map((t, i) => {
      const to = obj(t);
      return {
        name: str(to.name) || `type #${i}`,
        group: str(to.group),
        active: num(to.active_entities),
        mailbox: num(to.mailbox_depth),
        calls: num(to.calls_per_s),
        errors: num(to.errors_per_s),
        p50: num(to.p50_ms),
        p99: num(to.p99_ms),
        rpcs: arr(to.rpcs).map((r, k) => {
          const q = obj(r);
          return {
            name: str(q.name) || `rpc #${k}`,
            calls: num(q.calls_per_s),
            errors: num(q.errors_per_s),
            p50: num(q.p50_ms),
            p99: num(q.p99_ms),
          };
        }),
      };
    });
    const dead = obj(data.dead_letters);
    const events = arr(data.events).map((e) => {
      const eo = obj(e);
      return { time: num(eo.time_ms), kind: str(eo.kind) || 'event', message: str(eo.message) };
    });
    // Newest first even if the server forgets; a stable sort keeps its order on ties.
    events.sort((a, b) => (a.time === b.time ? 0 : a.time === null ? 1 : b.time === null ? -1 : b.time - a.time));
    // Cluster totals: the runners' own counters when any was scraped, else the per-type sums.
    const scraped = runners.filter((r) => r.metricsOk);
    const pick = (field) => (scraped.length ? sum(scraped.map((r) => r[field])) : sum(types.map((t) => t[field])));
    return {
      totals: { calls: pick('calls'), errors: pick('errors'), active: pick('active') },
      time: num(data.time_ms),
      version: str(data.version),
      storage: str(data.storage),
      manager: str(data.manager),
      runners,
      groups,
      types,
      backlog: arr(data.persisted_backlog).map((b) => ({ group: str(obj(b).group), pending: num(obj(b).pending) })),
      deadCount: num(dead.count),
      deadRecent: arr(dead.recent).map((d) => {
        const o = obj(d);
        return { time: num(o.time_ms), type: str(o.entity_type), id: str(o.entity_id), rpc: str(o.rpc), reason: str(o.reason) };
      }),
      events: events.slice(0, MAX_EVENTS),
    };
  }

  // Samples are taken once per successful poll (not per render: a click re-renders).
  function recordHistory(m) {
    for (const r of m.runners) colorOf(r.name); // colours follow the server's runner order
    record('total:calls', m.totals.calls);
    record('total:errors', m.totals.errors);
    const live = new Set();
    for (const t of m.types) {
      const key = `type:${t.name}`;
      if (live.has(key)) continue;
      live.add(key);
      record(key, t.calls);
    }
    for (const key of state.history.keys()) if (key.startsWith('type:') && !live.has(key)) state.history.delete(key);
  }

  // ---- header and tiles ----------------------------------------------------------------------
  function renderHeader(m) {
    replace($('manager-address'), m.manager || location.host);
    const pills = [];
    if (m.version) pills.push(h('span', { class: 'pill', title: 'manager version' }, h('b', { text: 'version' }), m.version));
    if (m.storage) pills.push(h('span', { class: 'pill', title: 'storage backend' }, h('b', { text: 'storage' }), m.storage));
    replace($('meta'), pills);
    const healthy = m.runners.filter((r) => r.healthy).length;
    document.title = `cluster-sst · ${healthy}/${m.runners.length} runners healthy`;
  }

  function tile(label, value, sub, opts = {}) {
    return h('div', { class: `tile ${opts.cls || ''}`, title: opts.title || null },
      h('div', { class: 'tile-label', text: label }),
      h('div', { class: 'tile-value' }, value),
      sub ? h('div', { class: 'tile-sub' }, sub) : null,
      opts.spark || null);
  }

  function renderTiles(m) {
    const total = m.runners.length;
    const healthy = m.runners.filter((r) => r.healthy).length;
    const unhealthy = m.runners.filter((r) => r.healthKnown && !r.healthy).length;
    const unknown = total - healthy - unhealthy;
    const shardsTotal = m.groups.reduce((a, g) => a + g.count, 0);
    const assigned = m.groups.reduce((a, g) => a + g.owners.filter((o) => o !== 'none').length, 0);
    const scraped = m.runners.filter((r) => r.metricsOk);
    const { calls, errors, active } = m.totals;
    const backlog = sum(m.backlog.map((b) => b.pending));
    const callsSeries = state.history.get('total:calls') || [];
    const errorsSeries = state.history.get('total:errors') || [];
    const unscraped = total - scraped.length;

    replace($('tiles'),
      tile('Runners', [h('span', { text: String(healthy) }), h('small', { text: ` / ${total}` })],
        total === 0 ? 'none registered' : healthy === total ? 'all healthy'
          : [unhealthy ? `${unhealthy} unhealthy` : '', unknown ? `${unknown} health unknown` : ''].filter(Boolean).join(' · '),
        { cls: unhealthy ? 'bad' : total > 0 && healthy < total ? 'warn' : total === 0 ? 'muted' : 'ok' }),
      tile('Shards assigned', [h('span', { text: fmtInt(assigned) }), h('small', { text: ` / ${fmtInt(shardsTotal)}` })],
        `${m.groups.length} group${m.groups.length === 1 ? '' : 's'}` +
          (shardsTotal > assigned ? ` · ${fmtInt(shardsTotal - assigned)} unassigned` : ''),
        { cls: shardsTotal > assigned ? 'warn' : '' }),
      tile('Calls/s', fmtRate(calls), unscraped > 0 ? `${unscraped} runner${unscraped === 1 ? '' : 's'} not scraped` : 'cluster total',
        { spark: sparkline(callsSeries, 'accent'), cls: 'with-spark' }),
      tile('Errors/s', fmtRate(errors), errors ? 'failed calls' : 'no failures',
        { spark: sparkline(errorsSeries, 'bad'), cls: `with-spark ${errors ? 'bad' : ''}` }),
      tile('Active entities', fmtInt(active), 'in memory'),
      tile('Persisted backlog', fmtInt(backlog), 'messages pending', { cls: backlog ? 'warn' : '' }),
      tile('Dead letters', fmtInt(m.deadCount ?? 0), 'total', { cls: m.deadCount ? 'bad' : '' }),
    );
  }

  function renderStatus() {
    const status = $('status');
    if (!status) return;
    const age = state.lastOk ? Date.now() - state.lastOk : null;
    let st, text, title;
    if (!state.lastOk) {
      st = state.failing ? 'down' : 'connecting';
      text = state.failing ? 'unreachable' : 'connecting…';
    } else if (state.failing) {
      st = 'down';
      text = `unreachable · last update ${fmtTime(state.lastOk)} (${fmtAgo(age)} ago)`;
    } else if (age > STALE_MS) {
      st = 'stale';
      text = `stale · last update ${fmtTime(state.lastOk)} (${fmtAgo(age)} ago)`;
    } else {
      st = 'live';
      text = `live · updated ${fmtTime(state.lastOk)}`;
    }
    if (state.lastServerTime !== null) title = `manager clock: ${new Date(state.lastServerTime).toISOString()}`;
    status.dataset.state = st;
    status.title = title || '';
    replace($('status-text'), text);
    document.body.classList.toggle('is-stale', st === 'stale' || st === 'down');
  }

  // ---- shard map -----------------------------------------------------------------------------
  function groupView(name) {
    let v = state.groups.get(name);
    if (v) return v;
    const info = h('span', { class: 'group-info' });
    const moved = h('span', { class: 'moved-badge', hidden: true });
    const grid = h('div', { class: 'cells', role: 'img', 'aria-label': `shards of group ${name}` });
    const legend = h('div', { class: 'legend' });
    const el = h('div', { class: 'group', dataset: { group: name } },
      h('div', { class: 'group-head' }, h('h3', { text: name }), info, moved),
      grid, legend);
    v = { el, grid, legend, info, moved, cells: [], movedTimer: 0 };
    state.groups.set(name, v);
    return v;
  }

  // Highlights the cells that changed owner, restarting the animation of those already lit;
  // one forced layout for the whole batch, however many shards a rebalance moved.
  function markMoved(grid, cells) {
    if (cells.length === 0) return;
    for (const cell of cells) cell.classList.remove('moved');
    void grid.offsetWidth;
    for (const cell of cells) {
      cell.classList.add('moved');
      clearTimeout(cell._movedTimer);
      cell._movedTimer = setTimeout(() => cell.classList.remove('moved'), MOVED_MS);
    }
  }

  function renderShards(m) {
    const container = $('groups');
    if (!container) return;
    const healthy = new Map(m.runners.map((r) => [r.name, r.healthy || !r.healthKnown]));
    const seen = new Set();
    const order = [];
    for (const g of m.groups) {
      if (seen.has(g.name)) continue; // a duplicated name would fight over one view
      seen.add(g.name);
      const v = groupView(g.name);
      order.push(v.el);
      v.grid.dataset.density = g.count > 2048 ? 'tiny' : g.count > 600 ? 'small' : 'normal';

      // Cells: grow or shrink to the group's size, then update in place.
      while (v.cells.length < g.count) {
        const i = v.cells.length;
        const cell = h('div', { class: 'shard', dataset: { shard: String(i) } });
        v.cells.push(cell);
        v.grid.append(cell);
      }
      while (v.cells.length > g.count) v.cells.pop().remove();

      const movedCells = [];
      const counts = new Map();
      for (let i = 0; i < g.count; i++) {
        const owner = g.owners[i];
        const cell = v.cells[i];
        counts.set(owner, (counts.get(owner) || 0) + 1);
        const before = cell.dataset.owner;
        if (before !== owner) {
          cell.dataset.owner = owner;
          cell.title = `shard ${i} → ${owner === 'none' ? 'unassigned' : owner}`;
          if (owner === 'none') {
            cell.classList.add('unassigned');
            cell.style.removeProperty('--c');
          } else {
            cell.classList.remove('unassigned');
            cell.style.setProperty('--c', colorOf(owner));
          }
          if (before !== undefined) movedCells.push(cell);
        }
        cell.classList.toggle('degraded', owner !== 'none' && healthy.get(owner) === false);
      }

      markMoved(v.grid, movedCells);
      const movedNow = movedCells.length;
      const assigned = g.count - (counts.get('none') || 0);
      replace(v.info, `${fmtInt(assigned)} / ${fmtInt(g.count)} assigned`);
      if (movedNow > 0) {
        v.moved.hidden = false;
        replace(v.moved, `${movedNow} moved`);
        clearTimeout(v.movedTimer);
        v.movedTimer = setTimeout(() => { v.moved.hidden = true; }, 4000);
      }

      // Legend: every runner (so an idle one is visible), then unassigned.
      const items = m.runners.map((r) =>
        h('span', { class: `legend-item${r.healthy || !r.healthKnown ? '' : ' degraded'}`, dataset: { legend: r.name } },
          h('i', { class: 'swatch', style: { '--c': colorOf(r.name) } }),
          h('span', { class: 'legend-name', text: r.name }),
          h('b', { text: fmtInt(counts.get(r.name) || 0) })));
      const none = counts.get('none') || 0;
      if (none > 0 || m.runners.length === 0) {
        items.push(h('span', { class: 'legend-item', dataset: { legend: 'none' } },
          h('i', { class: 'swatch unassigned' }), h('span', { class: 'legend-name', text: 'unassigned' }),
          h('b', { text: fmtInt(none) })));
      }
      replace(v.legend, items);
    }
    for (const [name, v] of state.groups) {
      if (!seen.has(name)) {
        v.el.remove();
        state.groups.delete(name);
      }
    }
    if (order.length === 0) replace(container, h('p', { class: 'empty', text: 'no shard groups' }));
    else {
      container.querySelector(':scope > .empty')?.remove();
      order.forEach((el, i) => { if (container.children[i] !== el) container.insertBefore(el, container.children[i] || null); });
    }
  }

  // ---- runners -------------------------------------------------------------------------------
  function numCell(text, cls, title) {
    return h('td', { class: `num ${cls || ''}`, title: title || null, text });
  }

  function renderRunners(m) {
    const tbody = document.querySelector('#runners tbody');
    if (!tbody) return;
    const rows = m.runners.map((r) => {
      const na = r.metricsOk ? '' : 'na';
      const health = !r.healthKnown
        ? h('span', { class: 'badge muted', text: 'unknown' })
        : r.healthy
          ? h('span', { class: 'badge ok', text: 'healthy' })
          : h('span', { class: 'badge bad', text: 'unhealthy' });
      const nameCell = h('td', { class: 'runner-name' },
        h('div', { class: 'name-line' }, h('i', { class: 'swatch', style: { '--c': colorOf(r.name) } }), h('span', { text: r.name })));
      if (!r.metricsOk) {
        const why = r.metricsPresent ? r.metricsError || 'scrape failed' : 'no metrics reported';
        nameCell.append(h('div', { class: 'sub err', title: why, text: `metrics: ${why}` }));
      }
      const versionCell = h('td', { class: 'mono', text: r.version || DASH });
      if (r.version && m.version && r.version !== m.version) {
        versionCell.classList.add('warn-text');
        versionCell.title = `differs from the manager's ${m.version}`;
      }
      const plugins = h('td', { class: 'plugins' },
        r.plugins.length === 0
          ? h('span', { class: 'faint', text: DASH })
          : r.plugins.map((p) => h('span', {
            class: 'chip',
            title: p.types.length ? `entity types: ${p.types.join(', ')}` : null,
            text: p.version ? `${p.name}@${p.version}` : p.name,
          })));
      return h('tr', { dataset: { runner: r.name }, class: r.healthy || !r.healthKnown ? '' : 'row-bad' },
        h('td', {}, health),
        nameCell,
        h('td', { class: 'mono', text: r.address || DASH }),
        h('td', { class: 'mono', text: r.admin || DASH }),
        versionCell,
        numCell(fmtInt(r.shards)),
        plugins,
        numCell(fmtCores(r.cpu), na, 'CPU cores in use'),
        numCell(fmtMiB(r.rss), na, 'resident memory, MiB'),
        numCell(fmtInt(r.active), na),
        numCell(fmtInt(r.mailbox), na),
        numCell(fmtRate(r.calls), na),
        numCell(fmtRate(r.errors), `${na} ${r.errors ? 'bad-text' : ''}`),
        numCell(fmtInt(r.connections), na),
        numCell(fmtInt(r.restarts), `${na} ${r.restarts ? 'warn-text' : ''}`));
    });
    if (rows.length === 0) rows.push(h('tr', { class: 'empty-row' }, h('td', { colspan: 15, text: 'no runners registered' })));
    tbody.replaceChildren(...rows);
    const unhealthy = m.runners.filter((r) => r.healthKnown && !r.healthy).length;
    const unscraped = m.runners.filter((r) => !r.metricsOk).length;
    const hint = [];
    hint.push(`${m.runners.length} registered`);
    if (unhealthy) hint.push(`${unhealthy} unhealthy`);
    if (unscraped) hint.push(`${unscraped} without metrics`);
    replace($('runners-hint'), hint.join(' · '));
  }

  // ---- entity types --------------------------------------------------------------------------
  function renderTypes(m) {
    const tbody = document.querySelector('#types tbody');
    if (!tbody) return;
    const rows = [];
    for (const t of m.types) {
      const series = state.history.get(`type:${t.name}`) || [];
      if (!state.expanded.has(t.name)) state.expanded.set(t.name, m.types.length <= 3);
      const open = state.expanded.get(t.name) && t.rpcs.length > 0;
      const toggle = t.rpcs.length
        ? h('button', {
          class: 'toggle', type: 'button', 'aria-expanded': open ? 'true' : 'false',
          title: open ? 'hide RPCs' : 'show RPCs',
          onclick: () => { state.expanded.set(t.name, !state.expanded.get(t.name)); renderTypes(lastModel); },
        }, h('span', { class: 'caret', 'aria-hidden': 'true', text: open ? '▾' : '▸' }), h('span', { text: t.name }))
        : h('span', { class: 'toggle static' }, h('span', { class: 'caret', text: '·' }), h('span', { text: t.name }));
      rows.push(h('tr', { class: 'type-row', dataset: { entityType: t.name } },
        h('td', { class: 'type-name' }, toggle, t.rpcs.length ? h('span', { class: 'faint rpc-count', text: ` ${t.rpcs.length} rpc${t.rpcs.length === 1 ? '' : 's'}` }) : null),
        h('td', { text: t.group || DASH }),
        numCell(fmtInt(t.active)),
        numCell(fmtInt(t.mailbox)),
        numCell(fmtRate(t.calls)),
        h('td', { class: 'trend' }, sparkline(series, 'accent')),
        numCell(fmtRate(t.errors), t.errors ? 'bad-text' : ''),
        numCell(fmtMs(t.p50)),
        numCell(fmtMs(t.p99), t.p99 !== null && t.p99 >= 100 ? 'warn-text' : '')));
      if (open) {
        for (const r of t.rpcs) {
          rows.push(h('tr', { class: 'rpc-row', dataset: { rpc: r.name, rpcOf: t.name } },
            h('td', { class: 'rpc-name' }, h('span', { class: 'mono', text: r.name })),
            h('td', {}), h('td', {}), h('td', {}),
            numCell(fmtRate(r.calls)),
            h('td', {}),
            numCell(fmtRate(r.errors), r.errors ? 'bad-text' : ''),
            numCell(fmtMs(r.p50)),
            numCell(fmtMs(r.p99), r.p99 !== null && r.p99 >= 100 ? 'warn-text' : '')));
        }
      }
    }
    if (rows.length === 0) rows.push(h('tr', { class: 'empty-row' }, h('td', { colspan: 9, text: 'no entity types active' })));
    tbody.replaceChildren(...rows);
  }

  // ---- backlog, dead letters, events ---------------------------------------------------------
  function renderBacklog(m) {
    const el = $('backlog');
    if (!el) return;
    if (m.backlog.length === 0) return replace(el, h('p', { class: 'empty', text: 'no persisted groups' }));
    const max = Math.max(1, ...m.backlog.map((b) => b.pending ?? 0));
    replace(el, h('div', { class: 'bars' }, m.backlog.map((b) =>
      h('div', { class: 'bar-row', dataset: { backlogGroup: b.group } },
        h('span', { class: 'bar-label', text: b.group || DASH }),
        h('span', { class: 'bar-track' }, h('span', {
          class: `bar-fill ${b.pending ? 'warn' : ''}`,
          style: { width: `${Math.max(b.pending ? 2 : 0, ((b.pending ?? 0) / max) * 100).toFixed(1)}%` },
        })),
        h('span', { class: 'bar-value num', text: fmtInt(b.pending) })))));
  }

  function renderDead(m) {
    const badge = $('dead-count');
    if (badge) {
      badge.textContent = fmtInt(m.deadCount ?? 0);
      badge.classList.toggle('bad', !!m.deadCount);
    }
    const el = $('dead');
    if (!el) return;
    if (m.deadRecent.length === 0) {
      return replace(el, h('p', { class: 'empty', text: m.deadCount ? 'no recent details' : 'no dead letters' }));
    }
    replace(el, h('ol', { class: 'dead-list' }, m.deadRecent.slice(0, MAX_DEAD).map((d) =>
      h('li', {},
        h('div', { class: 'dead-head' },
          h('span', { class: 'time', text: fmtTime(d.time) }),
          h('span', { class: 'mono', text: `${d.type || '?'}/${d.id || '?'}` }),
          d.rpc ? h('span', { class: 'chip', text: d.rpc }) : null),
        h('div', { class: 'dead-reason', text: d.reason || 'no reason given' })))));
  }

  const KNOWN_KINDS = new Set(['runner_joined', 'runner_left', 'runner_unhealthy', 'shards_moved',
    'plugin_loaded', 'plugin_failed', 'plugin_pushed', 'plugin_removed']);
  function renderEvents(m) {
    const el = $('events');
    if (!el) return;
    replace($('events-count'), m.events.length ? `${m.events.length} newest` : '');
    if (m.events.length === 0) return replace(el, h('li', { class: 'empty', text: 'no events yet' }));
    replace(el, m.events.map((e) => h('li', { dataset: { kind: KNOWN_KINDS.has(e.kind) ? e.kind : 'other' } },
      h('span', { class: 'time', text: fmtTime(e.time) }),
      h('span', { class: 'kind', text: e.kind.replace(/_/g, ' ') }),
      h('span', { class: 'message', text: e.message }))));
  }

  // ---- polling -------------------------------------------------------------------------------
  let lastModel = null;
  const SECTIONS = [
    ['header', renderHeader], ['summary', renderTiles], ['shard map', renderShards], ['runners', renderRunners],
    ['entity types', renderTypes], ['backlog', renderBacklog], ['dead letters', renderDead], ['events', renderEvents],
  ];

  function render(data) {
    const m = model(obj(data));
    lastModel = m;
    try {
      recordHistory(m);
    } catch (err) {
      console.error('dashboard: recording history failed', err);
    }
    const broken = [];
    for (const [name, fn] of SECTIONS) {
      try {
        fn(m);
      } catch (err) {
        // A bug here must not blank the whole page; console.error lets tests notice it.
        console.error(`dashboard: rendering ${name} failed`, err);
        broken.push(`${name}: ${err && err.message ? err.message : err}`);
      }
    }
    return broken;
  }

  function showBanner(kind, text) {
    const b = $('banner');
    if (!b) return;
    if (!text) {
      b.hidden = true;
      b.replaceChildren();
      return;
    }
    b.dataset.kind = kind;
    b.hidden = false;
    replace(b, text);
  }

  async function poll() {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    try {
      const headers = { Accept: 'application/json' };
      if (token) headers.Authorization = `Bearer ${token}`;
      let res;
      try {
        res = await fetch(API, { headers, cache: 'no-store', credentials: 'same-origin', signal: ctrl.signal });
      } catch (err) {
        throw new Error(err && err.name === 'AbortError' ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s` : `connection failed (${err && err.message ? err.message : err})`);
      }
      if (!res.ok) {
        const hint = res.status === 401 || res.status === 403 ? (token ? ' — is ?token= right?' : ' — add ?token=… to the URL') : '';
        throw new Error(`HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''} from ${API}${hint}`);
      }
      let data;
      try {
        data = JSON.parse(await res.text());
      } catch (err) {
        throw new Error(`${API} did not return JSON (${err && err.message ? err.message : err})`);
      }
      if (!data || typeof data !== 'object' || Array.isArray(data)) throw new Error(`${API} did not return a JSON object`);
      state.lastOk = Date.now();
      state.lastServerTime = num(data.time_ms);
      state.failing = false;
      const broken = render(data);
      showBanner('warn', broken.length ? `dashboard bug, some sections are not shown: ${broken.join('; ')}` : '');
      if (!state.loaded) {
        state.loaded = true;
        document.body.dataset.loaded = 'true';
      }
    } catch (err) {
      state.failing = true;
      const since = state.lastOk ? ` — retrying every ${POLL_MS / 1000} s, showing data from ${fmtTime(state.lastOk)}` : ` — retrying every ${POLL_MS / 1000} s`;
      showBanner('error', `manager unreachable: ${err && err.message ? err.message : err}${since}`);
    } finally {
      clearTimeout(timer);
      renderStatus();
      setTimeout(poll, POLL_MS);
    }
  }

  function start() {
    setInterval(renderStatus, 500);
    poll();
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
