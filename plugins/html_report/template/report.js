// The report page. Data: #hl-meta (JSON) and #hl-patterns (one base64 line of uint8 weights,
// round(255 w), laid out [head, query, key], per entry of META.captures). State lives in `state`
// and in the URL fragment (#prompt=0&layer=1&head=mean&step=2&query=3), so a view can be linked.
'use strict';
(function () {
  window.hlFlushErrors();
  const $ = (id) => document.getElementById(id);
  const META = JSON.parse($('hl-meta').textContent);
  const LINES = $('hl-patterns').textContent.split('\n');
  const CAPS = META.captures;
  const GEN = META.generation || { mode: 'none', steps: [] };
  const MODE = GEN.mode || 'none';
  const MODEL = META.model || {};
  const MASK_ID = GEN.mask_id !== undefined && GEN.mask_id !== null ? GEN.mask_id : MODEL.mask_id;
  const MAX_PX = 480;

  // ---- data access -------------------------------------------------------------------------
  const uniqueSorted = (values) => Array.from(new Set(values)).sort((a, b) => a - b);
  const capIndex = new Map(CAPS.map((c, i) => [c.prompt + '/' + c.layer + '/' + c.step, i]));
  const genStep = new Map((GEN.steps || []).map((s) => [s.step, s]));
  const decoded = new Map();

  function weights(i) {
    if (!decoded.has(i)) {
      const text = atob(LINES[i]);
      const bytes = new Uint8Array(text.length);
      for (let j = 0; j < text.length; ++j) bytes[j] = text.charCodeAt(j);
      decoded.set(i, bytes);
    }
    return decoded.get(i);
  }

  function tokenText(id) {
    if (id === MASK_ID) return '[MASK]';
    const known = META.vocab[String(id)];
    return known !== undefined ? known : '#' + id;
  }

  const promptChoices = CAPS.length ? uniqueSorted(CAPS.map((c) => c.prompt)) : META.prompts.map((p, i) => i);
  const layerChoices = uniqueSorted(CAPS.map((c) => c.layer));
  const headChoices = uniqueSorted([].concat(...CAPS.map((c) => c.heads)));
  const stepsOf = (prompt) => uniqueSorted(CAPS.filter((c) => c.prompt === prompt).map((c) => c.step));

  // ---- state and URL fragment ---------------------------------------------------------------
  const state = { prompt: promptChoices[0] || 0, layer: layerChoices[0] || 0, head: 'mean', step: 0, query: null };

  function readFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const number = (name) => (params.has(name) && /^\d+$/.test(params.get(name)) ? Number(params.get(name)) : null);
    const prompt = number('prompt');
    if (prompt !== null && promptChoices.includes(prompt)) state.prompt = prompt;
    const layer = number('layer');
    if (layer !== null && layerChoices.includes(layer)) state.layer = layer;
    const head = number('head');
    if (params.get('head') === 'mean') state.head = 'mean';
    else if (head !== null && headChoices.includes(head)) state.head = head;
    const steps = stepsOf(state.prompt);
    const step = number('step');
    state.step = step !== null && steps.includes(step) ? step : steps.length ? steps[0] : 0;
    state.query = number('query');
  }

  function writeFragment() {
    const params = new URLSearchParams({ prompt: state.prompt, layer: state.layer, head: state.head, step: state.step });
    if (state.query !== null) params.set('query', state.query);
    try {
      history.replaceState(null, '', '#' + params.toString());
    } catch (e) {
      // Some file:// contexts refuse history changes; the page works without a linkable fragment.
    }
  }

  // ---- colours ------------------------------------------------------------------------------
  // A viridis-like ramp: dark for 0, yellow for 1, evenly perceptible in between.
  const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const LUT = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; ++i) {
    const x = (i / 255) * (RAMP.length - 1), k = Math.min(RAMP.length - 2, Math.floor(x)), f = x - k;
    for (let ch = 0; ch < 3; ++ch) LUT[i * 3 + ch] = RAMP[k][ch] + f * (RAMP[k + 1][ch] - RAMP[k][ch]);
  }
  const MISSING = [224, 224, 224];
  const colour = (w) => { const i = Math.round(Math.max(0, Math.min(1, w)) * 255) * 3; return [LUT[i], LUT[i + 1], LUT[i + 2]]; };

  // ---- sequences ----------------------------------------------------------------------------
  // The tokens around the selected step: `axis` names absolute positions (what the forward pass
  // saw), `strip` is what the token strip shows, with classes.
  function sequence() {
    const prompt = META.prompts[state.prompt] || { ids: [], tokens: [] };
    const promptText = (i) => (prompt.tokens && prompt.tokens[i] !== undefined ? prompt.tokens[i] : tokenText(prompt.ids[i]));
    const fromIds = (ids) => ids.map((id, i) => (i < prompt.ids.length ? promptText(i) : tokenText(id)));
    const step = genStep.get(state.step);
    if (MODE === 'autoregressive' && GEN.output_ids) {
      const ids = GEN.output_ids, shown = step ? prompt.ids.length + state.step + 1 : prompt.ids.length;
      const axis = fromIds(ids);
      const strip = ids.slice(0, shown).map((id, pos) => ({ id, pos, text: axis[pos], cls: step && pos === shown - 1 ? 'next' : '' }));
      return { axis, strip, caption: step ? 'tokens so far; dashed: the token chosen at this step' : 'tokens', input: null };
    }
    if (MODE === 'masked_diffusion' && step) {
      const committed = new Set(step.committed || []);
      const mark = (ids, withCommitted, texts = fromIds(ids)) => ids.map((id, pos) => ({
        id, pos, text: texts[pos], cls: (id === MASK_ID ? 'mask ' : '') + (withCommitted && committed.has(pos) ? 'committed' : ''),
      }));
      return { axis: fromIds(step.input), strip: mark(step.ids, true), caption: 'sequence after this step; green: committed at this step',
               input: { strip: mark(step.input, false), caption: 'input of this step (what the heatmap\'s forward pass saw)' } };
    }
    const axis = fromIds(prompt.ids);
    return { axis, strip: prompt.ids.map((id, pos) => ({ id, pos, text: axis[pos], cls: '' })), caption: 'tokens', input: null };
  }

  // ---- the attention matrix -----------------------------------------------------------------
  // Autoregressive runs stack every decode step up to the selected one under the prefill rows.
  function matrix() {
    const parts = [];
    if (MODE === 'autoregressive') {
      for (const s of stepsOf(state.prompt)) if (s <= state.step && capIndex.has(state.prompt + '/' + state.layer + '/' + s)) parts.push(capIndex.get(state.prompt + '/' + state.layer + '/' + s));
    } else if (capIndex.has(state.prompt + '/' + state.layer + '/' + state.step)) {
      parts.push(capIndex.get(state.prompt + '/' + state.layer + '/' + state.step));
    }
    if (!parts.length) return null;
    let q0 = Infinity, q1 = 0, k0 = Infinity, k1 = 0;
    for (const i of parts) {
      const c = CAPS[i];
      q0 = Math.min(q0, c.query_offset); q1 = Math.max(q1, c.query_offset + c.queries);
      k0 = Math.min(k0, c.key_offset); k1 = Math.max(k1, c.key_offset + c.keys);
    }
    const rows = q1 - q0, cols = k1 - k0, values = new Float32Array(rows * cols).fill(NaN);
    for (const i of parts) {
      const c = CAPS[i], w = weights(i), plane = c.queries * c.keys;
      const heads = state.head === 'mean' ? c.heads.map((h, j) => j) : [c.heads.indexOf(state.head)].filter((j) => j >= 0);
      if (!heads.length) continue;
      for (let r = 0; r < c.queries; ++r)
        for (let k = 0; k < c.keys; ++k) {
          let sum = 0;
          for (const h of heads) sum += w[h * plane + r * c.keys + k];
          values[(c.query_offset - q0 + r) * cols + (c.key_offset - k0 + k)] = sum / heads.length / 255;
        }
    }
    return { q0, k0, rows, cols, values, parts };
  }

  // ---- drawing ------------------------------------------------------------------------------
  const canvas = $('hl-heatmap');
  let current = null;  // { m, scale, seq }

  function drawHeatmap(m) {
    const ctx = canvas.getContext('2d');
    const scale = Math.min(40, MAX_PX / Math.max(m.rows, m.cols));
    canvas.width = Math.max(1, Math.round(m.cols * scale));
    canvas.height = Math.max(1, Math.round(m.rows * scale));
    const image = ctx.createImageData(canvas.width, canvas.height);
    for (let y = 0; y < canvas.height; ++y) {
      const r = Math.min(m.rows - 1, Math.floor(y / scale));
      for (let x = 0; x < canvas.width; ++x) {
        const v = m.values[r * m.cols + Math.min(m.cols - 1, Math.floor(x / scale))];
        const rgb = Number.isNaN(v) ? MISSING : colour(v), at = (y * canvas.width + x) * 4;
        image.data[at] = rgb[0]; image.data[at + 1] = rgb[1]; image.data[at + 2] = rgb[2]; image.data[at + 3] = 255;
      }
    }
    ctx.putImageData(image, 0, 0);
    const q = queryPosition(m);
    if (q !== null) {
      ctx.strokeStyle = '#d62728';
      ctx.lineWidth = 2;
      ctx.strokeRect(1, (q - m.q0) * scale + 1, canvas.width - 2, Math.max(2, scale - 2));
    }
    return scale;
  }

  function queryPosition(m) {
    if (!m) return null;
    if (state.query !== null && state.query >= m.q0 && state.query < m.q0 + m.rows) return state.query;
    return m.q0 + m.rows - 1;  // the newest query row by default
  }

  function fillTokens(box, strip, m, withWeights) {
    box.textContent = '';
    const q = queryPosition(m);
    for (const t of strip) {
      const span = document.createElement('span');
      span.className = 'tok ' + t.cls;
      span.textContent = t.text;
      span.dataset.pos = t.pos;
      span.dataset.id = t.id;
      span.title = 'position ' + t.pos + ', id ' + t.id + ': ' + JSON.stringify(t.text);
      if (m && t.pos === q) span.classList.add('query');
      if (m && withWeights && q !== null) {
        const c = t.pos - m.k0, v = c >= 0 && c < m.cols ? m.values[(q - m.q0) * m.cols + c] : NaN;
        if (!Number.isNaN(v)) {
          const rgb = colour(v);
          span.style.background = 'rgba(' + rgb.join(',') + ',0.75)';
          span.style.color = v > 0.55 ? '#000' : '#fff';
          span.title += ', weight from the query ' + v.toFixed(3);
        } else span.classList.add('absent');
      }
      span.addEventListener('click', () => { state.query = t.pos; render(); });
      box.appendChild(span);
    }
  }

  function stepText() {
    const s = genStep.get(state.step);
    if (!s) return 'step ' + state.step;
    if (MODE === 'autoregressive')
      return 'step ' + s.step + ' (' + s.phase + ', query position ' + s.query_offset + '): chose ' + JSON.stringify(s.token_string !== undefined ? s.token_string : tokenText(s.token));
    if (MODE === 'masked_diffusion')
      return 'step ' + s.step + ', block ' + s.block + ': committed positions ' + (s.committed || []).join(', ');
    return 'step ' + s.step;
  }

  function render() {
    writeFragment();
    $('hl-prompt').value = String(state.prompt);
    $('hl-layer').value = String(state.layer);
    $('hl-head').value = String(state.head);
    const steps = stepsOf(state.prompt), slider = $('hl-step');
    $('hl-step-label').hidden = steps.length <= 1 && MODE === 'none';
    slider.max = String(Math.max(0, steps.length - 1));
    slider.value = String(Math.max(0, steps.indexOf(state.step)));
    $('hl-step-text').textContent = stepText();

    const m = matrix(), seq = sequence();
    $('hl-tokens-caption').textContent = seq.caption + (m ? '; colour: attention weight from the query (red outline) to each token' : '');
    fillTokens($('hl-tokens'), seq.strip, m, MODE !== 'masked_diffusion');
    $('hl-input-caption').textContent = seq.input ? seq.input.caption : '';
    fillTokens($('hl-input-tokens'), seq.input ? seq.input.strip : [], m, true);
    canvas.hidden = !m;
    if (!m) {
      $('hl-heatmap-caption').textContent = CAPS.length ? 'no pattern captured for this layer and step' : 'no attention patterns in this run';
      current = null;
      return;
    }
    const scale = drawHeatmap(m);
    current = { m, scale, seq };
    const headName = state.head === 'mean' ? 'mean of heads ' + headChoices.join(',') : 'head ' + state.head;
    $('hl-heatmap-caption').textContent = 'layer ' + state.layer + ', ' + headName + ': rows are queries ' + m.q0 + '-' + (m.q0 + m.rows - 1) +
      ', columns keys ' + m.k0 + '-' + (m.k0 + m.cols - 1) + '; grey: not captured. Weights are stored to 1/255.';
    recordRect();
    canvas.dataset.view = state.prompt + '/' + state.layer + '/' + state.head + '/' + state.step;
  }

  // The canvas's page rectangle, for tests that read screenshots; re-measured once fonts and layout
  // have settled, since the token strips above it may reflow.
  function recordRect() {
    const box = canvas.getBoundingClientRect();
    canvas.dataset.rect = [box.left + window.scrollX, box.top + window.scrollY, box.width, box.height].map(Math.round).join(',');
  }
  window.addEventListener('load', recordRect);
  window.addEventListener('resize', recordRect);

  function cellAt(event) {
    if (!current) return null;
    const { m, scale } = current;
    const r = Math.floor(event.offsetY / scale), c = Math.floor(event.offsetX / scale);
    return r >= 0 && r < m.rows && c >= 0 && c < m.cols ? { q: m.q0 + r, k: m.k0 + c, v: m.values[r * m.cols + c] } : null;
  }

  canvas.addEventListener('mousemove', (event) => {
    const cell = cellAt(event);
    if (!cell) return;
    const name = (pos) => pos + ' ' + JSON.stringify(current.seq.axis[pos] !== undefined ? current.seq.axis[pos] : '?');
    $('hl-readout').textContent = 'query ' + name(cell.q) + '\nkey   ' + name(cell.k) + '\nweight ' +
      (Number.isNaN(cell.v) ? 'not captured' : cell.v.toFixed(3));
  });
  canvas.addEventListener('click', (event) => { const cell = cellAt(event); if (cell) { state.query = cell.q; render(); } });

  // ---- controls -----------------------------------------------------------------------------
  function fillSelect(select, choices, label) {
    for (const value of choices) {
      const option = document.createElement('option');
      option.value = String(value);
      option.textContent = label(value);
      select.appendChild(option);
    }
  }
  fillSelect($('hl-prompt'), promptChoices, (p) => p + ': ' + (META.prompts[p].text || META.prompts[p].ids.join(' ')).slice(0, 40));
  fillSelect($('hl-layer'), layerChoices, String);
  fillSelect($('hl-head'), ['mean'].concat(headChoices), (h) => (h === 'mean' ? 'mean of heads' : String(h)));
  $('hl-prompt').addEventListener('change', (e) => { state.prompt = Number(e.target.value); state.step = stepsOf(state.prompt)[0] || 0; state.query = null; render(); });
  $('hl-layer').addEventListener('change', (e) => { state.layer = Number(e.target.value); render(); });
  $('hl-head').addEventListener('change', (e) => { state.head = e.target.value === 'mean' ? 'mean' : Number(e.target.value); render(); });
  $('hl-step').addEventListener('input', (e) => { state.step = stepsOf(state.prompt)[Number(e.target.value)]; state.query = null; render(); });
  window.addEventListener('hashchange', () => { readFragment(); render(); });

  // ---- header, prompts, notes ---------------------------------------------------------------
  $('hl-model').textContent = [
    (MODEL.architecture || '?') + ' (' + (MODEL.adapter || '?') + ')',
    MODEL.n_layers + ' layers x ' + MODEL.n_heads + ' heads, d_model ' + MODEL.d_model,
    MODEL.path, 'mode ' + MODE, META.run,
  ].join('  |  ');
  META.prompts.forEach((p, i) => {
    const item = document.createElement('li');
    item.textContent = (p.text ? JSON.stringify(p.text) : 'ids ' + p.ids.join(',')) + '  (' + p.ids.length + ' tokens' + (p.source && p.source !== 'prompt' ? ', ' + p.source : '') + ')';
    item.dataset.prompt = i;
    $('hl-prompts').appendChild(item);
  });
  for (const note of META.notes || []) {
    const item = document.createElement('li');
    item.textContent = note;
    $('hl-notes').appendChild(item);
  }
  const legend = $('hl-legend-bar').getContext('2d');
  for (let x = 0; x < 160; ++x) { legend.fillStyle = 'rgb(' + colour(x / 159).join(',') + ')'; legend.fillRect(x, 0, 1, 12); }

  // ---- analyzer reports ---------------------------------------------------------------------
  const formatValue = (v) => (v === null || v === undefined ? '\u2014' : typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toPrecision(4))
    : typeof v === 'object' ? JSON.stringify(v) : String(v));

  function headsTable(name, rows) {
    const columns = [];
    for (const key of ['layer', 'head']) if (rows.some((r) => key in r)) columns.push(key);
    for (const r of rows) for (const key of Object.keys(r)) if (!columns.includes(key)) columns.push(key);
    const table = document.createElement('table');
    table.className = 'heads';
    table.dataset.analyzer = name;
    const head = table.createTHead().insertRow(), body = table.createTBody();
    let sorted = { column: null, descending: false };
    const fill = () => {
      body.textContent = '';
      for (const r of rows) {
        const tr = body.insertRow();
        tr.dataset.layer = r.layer; tr.dataset.head = r.head;
        for (const key of columns) {
          const td = tr.insertCell();
          td.textContent = formatValue(r[key]);
          if (typeof r[key] !== 'number') td.className = 'text';
        }
        tr.addEventListener('click', () => {
          if (layerChoices.includes(r.layer)) state.layer = r.layer;
          if (headChoices.includes(r.head)) state.head = r.head;
          render();
          $('hl-attention').scrollIntoView();
        });
      }
    };
    columns.forEach((key) => {
      const th = document.createElement('th');
      th.textContent = key;
      th.addEventListener('click', () => {
        sorted = { column: key, descending: sorted.column === key && !sorted.descending };
        const rank = (v) => (v === null || v === undefined ? 1 : 0);  // nulls last either way
        rows.sort((a, b) => rank(a[key]) - rank(b[key]) || (rank(a[key]) ? 0 : (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0) * (sorted.descending ? -1 : 1)));
        for (const other of head.children) other.className = '';
        th.className = sorted.descending ? 'sorted-desc' : 'sorted-asc';
        fill();
      });
      head.appendChild(th);
    });
    fill();
    return table;
  }

  function collapsible(title, value) {
    const details = document.createElement('details');
    const summary = document.createElement('summary');
    summary.textContent = title;
    const pre = document.createElement('pre');
    pre.textContent = JSON.stringify(value, null, 2);
    details.append(summary, pre);
    return details;
  }

  for (const { file, report } of META.reports) {
    const section = document.createElement('div');
    section.className = 'report';
    const name = typeof report.analyzer === 'string' ? report.analyzer : file;
    section.dataset.analyzer = name;
    const title = document.createElement('h3');
    title.textContent = name + '  (' + file + ')';
    section.appendChild(title);
    if (report.definitions && typeof report.definitions === 'object') {
      const details = document.createElement('details');
      const summary = document.createElement('summary');
      summary.textContent = 'definitions';
      const list = document.createElement('dl');
      list.className = 'definitions';
      for (const [term, text] of Object.entries(report.definitions)) {
        const dt = document.createElement('dt'), dd = document.createElement('dd');
        dt.textContent = term;
        dd.textContent = typeof text === 'string' ? text : JSON.stringify(text);
        list.append(dt, dd);
      }
      details.append(summary, list);
      section.appendChild(details);
    }
    if (Array.isArray(report.heads)) section.appendChild(headsTable(name, report.heads.filter((r) => r && typeof r === 'object')));
    for (const [key, value] of Object.entries(report))
      if (!['analyzer', 'heads', 'definitions'].includes(key)) section.appendChild(collapsible(key, value));
    $('hl-reports').appendChild(section);
  }
  if (!META.reports.length) {
    const none = document.createElement('p');
    none.textContent = 'No analyzer reports in this run (run analyzers with --analyze NAME or hooklens analyze RUN).';
    $('hl-reports').appendChild(none);
  }

  readFragment();
  render();
  document.body.dataset.ready = '1';
})();
