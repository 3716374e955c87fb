// cogserve playground: submit through the async images API, poll for progress, show the image.
// Plain browser JavaScript, no dependencies. URLs are relative so the page works behind a prefix.
"use strict";

(() => {
  const API = "api/paas/v4";
  const SUBMIT_URL = `${API}/async/images/generations`;
  const ENHANCE_URL = `${API}/images/enhance`;
  // A stored image's Content Credentials, read and validated by the server (ids are URL-safe).
  const credentialsUrl = (id) => `files/${encodeURIComponent(id)}/credentials`;
  const resultUrl = (id) => `${API}/async-result/${encodeURIComponent(id)}`;
  const cancelUrl = (id) => `${SUBMIT_URL}/${encodeURIComponent(id)}/cancel`;
  const POLL_MS = 300;
  const KEY_STORAGE = "cogserve.playground.apiKey";
  const HISTORY_STORAGE = "cogserve.playground.history";
  const HISTORY_LIMIT = 24;
  const MAX_SEED = 2n ** 63n - 1n;
  const CUSTOM = "custom";

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("server-status"),
    form: $("generate-form"),
    prompt: $("prompt"),
    promptCount: $("prompt-count"),
    model: $("model"),
    quality: $("quality"),
    size: $("size"),
    seed: $("seed"),
    seedError: $("seed-error"),
    custom: $("custom-size"),
    width: $("width"),
    height: $("height"),
    sizeError: $("size-error"),
    authField: $("auth-field"),
    apiKey: $("api-key"),
    submit: $("submit"),
    enhance: $("enhance"),
    enhanceNote: $("enhance-note"),
    enhanceNoteText: $("enhance-note-text"),
    enhanceUndo: $("enhance-undo"),
    cancel: $("cancel"),
    alert: $("alert"),
    progress: $("progress"),
    progressBar: $("progress-bar"),
    progressLabel: $("progress-label"),
    result: $("result"),
    resultLink: $("result-link"),
    resultImage: $("result-image"),
    resultCaption: $("result-caption"),
    credentials: $("credentials"),
    credentialsSummary: $("credentials-summary"),
    credentialsClaims: $("credentials-claims"),
    placeholder: $("placeholder"),
    history: $("history"),
    historyEmpty: $("history-empty"),
  };

  let config = null;
  let task = null; // the generation in flight: {id, cancelRequested}
  let typedPrompt = null; // the prompt as typed, while the textarea holds the enhancer's rewrite
  let history = [];

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  // The server counts characters as Python does (code points), not UTF-16 units.
  const charCount = (text) => Array.from(text).length;
  const gcd = (a, b) => (b ? gcd(b, a % b) : a);

  // --- HTTP -------------------------------------------------------------------------------------

  async function api(method, url, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const key = config && config.auth_required ? ui.apiKey.value.trim() : "";
    if (key) headers.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(url, { method, headers, body, cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, null, `Cannot reach the server (${err.message}).`);
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      // Not JSON: reported below from the status line.
    }
    if (!response.ok) {
      const error = payload && payload.error;
      if (error && error.message) throw new ApiError(response.status, error.code ?? null, error.message);
      throw new ApiError(response.status, null, `HTTP ${response.status} ${response.statusText}`.trim());
    }
    if (payload === null) throw new ApiError(response.status, null, "The server answered without JSON.");
    return payload;
  }

  // --- Validation (the same rules the server applies) -------------------------------------------

  function selectedSize() {
    if (ui.size.value !== CUSTOM) return { value: ui.size.value, problem: null };
    const limits = config.sizes;
    const sides = [
      ["width", ui.width.value.trim()],
      ["height", ui.height.value.trim()],
    ];
    const numbers = [];
    for (const [name, raw] of sides) {
      if (!/^[0-9]{1,5}$/.test(raw)) return { problem: `The ${name} must be a whole number of pixels.` };
      const value = Number(raw);
      if (value < limits.min || value > limits.max) {
        return {
          problem: `Each side must be between ${limits.min} and ${limits.max} px; the ${name} is ${value}.`,
        };
      }
      if (value % limits.multiple) {
        return { problem: `Each side must be divisible by ${limits.multiple}; the ${name} is ${value}.` };
      }
      numbers.push(value);
    }
    const [width, height] = numbers;
    if (width * height > limits.max_pixels) {
      return {
        problem:
          `Width × height must be at most ${limits.max_pixels.toLocaleString("en")} px (2^21); ` +
          `${width}×${height} is ${(width * height).toLocaleString("en")}.`,
      };
    }
    return { value: `${width}x${height}`, problem: null };
  }

  function seedValue() {
    const raw = ui.seed.value.trim();
    if (raw === "") return { value: null, problem: null };
    if (!/^[0-9]{1,19}$/.test(raw) || BigInt(raw) > MAX_SEED) {
      return { problem: `The seed must be a whole number from 0 to ${MAX_SEED}.` };
    }
    return { value: BigInt(raw).toString(), problem: null };
  }

  function showFieldError(node, problem) {
    node.textContent = problem || "";
    node.hidden = !problem;
  }

  // Checks the form, shows what is wrong next to the field, and returns the request or null.
  function validate() {
    if (!config) return null;
    const prompt = ui.prompt.value;
    const count = charCount(prompt);
    const tooLong = count > config.max_prompt_chars;
    ui.promptCount.textContent = `${count.toLocaleString("en")} / ${config.max_prompt_chars.toLocaleString("en")}`;
    ui.promptCount.classList.toggle("over", tooLong);
    ui.prompt.setAttribute("aria-invalid", String(tooLong));

    const size = selectedSize();
    showFieldError(ui.sizeError, size.problem);
    ui.width.setAttribute("aria-invalid", String(Boolean(size.problem)));
    ui.height.setAttribute("aria-invalid", String(Boolean(size.problem)));

    const seed = seedValue();
    showFieldError(ui.seedError, seed.problem);
    ui.seed.setAttribute("aria-invalid", String(Boolean(seed.problem)));

    const ok = prompt.trim() !== "" && !tooLong && !size.problem && !seed.problem;
    ui.submit.disabled = !ok || task !== null;
    ui.enhance.disabled = prompt.trim() === "" || tooLong || task !== null;
    if (!ok) return null;
    return {
      model: ui.model.value,
      prompt,
      size: size.value,
      quality: ui.quality.value,
      seed: seed.value,
    };
  }

  function requestBody(request) {
    const body = JSON.stringify({
      model: request.model,
      prompt: request.prompt,
      size: request.size,
      quality: request.quality,
      // The page enhances only when asked (the Enhance button), so the prompt sent is the one shown.
      enhance_prompt: false,
    });
    // Seeds go up to 2^63-1, beyond what a JS number holds exactly: splice the digits in as text.
    return request.seed === null ? body : `${body.slice(0, -1)},"seed":${request.seed}}`;
  }

  // --- Display ------------------------------------------------------------------------------------

  function showAlert(err) {
    ui.alert.replaceChildren();
    if (err.code) {
      const code = document.createElement("strong");
      code.className = "code";
      code.textContent = `Error ${err.code}`;
      ui.alert.append(code, " ");
    }
    ui.alert.append(err.message);
    ui.alert.hidden = false;
  }

  function hideAlert() {
    ui.alert.hidden = true;
    ui.alert.replaceChildren();
  }

  function showProgress(status) {
    ui.progress.hidden = false;
    ui.placeholder.hidden = true;
    const position = status && status.queue_position;
    if (status === null) {
      ui.progressBar.removeAttribute("value"); // indeterminate
      ui.progressLabel.textContent = "Submitting…";
    } else if (position !== undefined && position !== null) {
      ui.progressBar.removeAttribute("value");
      ui.progressLabel.textContent = `Queued, position ${position}`;
    } else if (status.state === "queued") {
      ui.progressBar.removeAttribute("value"); // waiting, but not in this process's queue
      ui.progressLabel.textContent = "Queued";
    } else {
      const percent = Math.max(0, Math.min(100, Math.round(status.progress ?? 0)));
      ui.progressBar.value = percent;
      ui.progressLabel.textContent = `Generating… ${percent}%`;
    }
  }

  function hideProgress() {
    ui.progress.hidden = true;
    ui.progressBar.value = 0;
  }

  function describe(entry) {
    const seed = entry.seed === null ? "random seed" : `seed ${entry.seed}`;
    const parts = [entry.size.replace("x", "×"), entry.quality, seed, entry.model];
    if (entry.seconds !== undefined) parts.push(`${entry.seconds.toFixed(1)} s`);
    return parts.join(" · ");
  }

  function showEntry(entry) {
    ui.resultImage.src = entry.url;
    ui.resultImage.alt = entry.prompt;
    ui.resultLink.href = entry.url;
    const prompt = document.createElement("span");
    prompt.className = "caption-prompt";
    prompt.textContent = entry.prompt;
    const meta = document.createElement("span");
    meta.className = "caption-meta";
    meta.textContent = describe(entry);
    ui.resultCaption.replaceChildren(prompt, meta);
    ui.result.hidden = false;
    ui.placeholder.hidden = true;
    for (const item of ui.history.querySelectorAll("button")) {
      item.setAttribute("aria-pressed", String(item.dataset.url === entry.url));
    }
    showCredentials(entry.url);
  }

  // The image id is the link's last path segment without ".png": /files/<id>.png, or a presigned
  // S3 URL .../<id>.png?X-Amz-...
  function imageIdOf(url) {
    const path = new URL(url, document.baseURI).pathname;
    const name = path.slice(path.lastIndexOf("/") + 1);
    return name.endsWith(".png") ? name.slice(0, -4) : null;
  }

  const CLAIM_NAMES = [
    ["digital_source_type", "Source"],
    ["generator", "Generator"],
    ["model", "Model"],
    ["image_id", "Image id"],
    ["server", "Server"],
    ["prompt", "Prompt"],
    ["user_id", "User id"],
    ["signed_by", "Signed by"],
    ["issuer", "Issuer"],
    ["signed_at", "Timestamp"],
  ];

  async function showCredentials(url) {
    ui.credentials.hidden = true;
    ui.credentials.dataset.url = url;
    const imageId = imageIdOf(url);
    if (!imageId) return;
    let answer;
    try {
      answer = await api("GET", credentialsUrl(imageId));
    } catch {
      return; // an expired image, or an older server: no badge rather than a wrong one
    }
    if (ui.credentials.dataset.url !== url) return; // another image was shown meanwhile
    let state = "none";
    let text = "No Content Credentials";
    if (answer.present && !answer.valid) {
      state = "invalid";
      text = "Content Credentials: invalid";
    } else if (answer.present) {
      state = answer.trusted ? "trusted" : "valid";
      const who = answer.trusted ? "trusted signer" : "signer not on a trust list";
      text = `Content Credentials · ${answer.ai_generated ? "AI-generated" : "signed"} · ${who}`;
    }
    ui.credentials.dataset.state = state;
    ui.credentialsSummary.textContent = text;
    const rows = [];
    for (const [key, label] of CLAIM_NAMES) {
      const value = answer.claims && answer.claims[key];
      if (!value) continue;
      const term = document.createElement("dt");
      term.textContent = label;
      const detail = document.createElement("dd");
      detail.textContent = key === "digital_source_type" ? value.slice(value.lastIndexOf("/") + 1) : value;
      detail.dataset.claim = key;
      rows.push(term, detail);
    }
    ui.credentialsClaims.replaceChildren(...rows);
    ui.credentials.hidden = false;
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const probe = new Image();
      probe.onload = () => resolve();
      probe.onerror = () => reject(new ApiError(0, null, "The image could not be loaded."));
      probe.src = url;
    });
  }

  function renderHistory() {
    ui.history.replaceChildren(
      ...history.map((entry) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "thumb";
        button.dataset.url = entry.url;
        button.dataset.testid = "history-item";
        button.title = `${entry.prompt}\n${describe(entry)}`;
        button.setAttribute("aria-label", `${entry.prompt} (${describe(entry)})`);
        button.setAttribute("aria-pressed", "false");
        button.addEventListener("click", () => showEntry(entry));
        const image = document.createElement("img");
        image.src = entry.url;
        image.alt = "";
        image.loading = "lazy";
        const label = document.createElement("span");
        label.className = "thumb-label";
        label.textContent = entry.size.replace("x", "×");
        button.append(image, label);
        const item = document.createElement("li");
        item.append(button);
        return item;
      }),
    );
    ui.historyEmpty.hidden = history.length > 0;
  }

  function addHistory(entry) {
    history = [entry, ...history].slice(0, HISTORY_LIMIT);
    try {
      sessionStorage.setItem(HISTORY_STORAGE, JSON.stringify(history));
    } catch {
      // Storage full or disabled: the strip still works for this page.
    }
    renderHistory();
  }

  function setBusy(busy) {
    ui.cancel.hidden = !busy;
    ui.cancel.disabled = false;
    ui.submit.textContent = busy ? "Generating…" : "Generate";
    ui.form.setAttribute("aria-busy", String(busy));
    validate();
  }

  // --- The generation -----------------------------------------------------------------------------

  async function requestCancel(current) {
    current.cancelRequested = true;
    ui.cancel.disabled = true;
    if (!current.id) return; // sent as soon as the id is known
    try {
      await api("POST", cancelUrl(current.id));
    } catch (err) {
      showAlert(err);
    }
  }

  async function generate(request) {
    const current = { id: null, cancelRequested: false };
    task = current;
    const started = performance.now();
    hideAlert();
    setBusy(true);
    showProgress(null);
    try {
      let status = await api("POST", SUBMIT_URL, requestBody(request));
      current.id = status.id;
      if (current.cancelRequested) requestCancel(current);
      while (status.task_status === "PROCESSING") {
        showProgress(status);
        await sleep(POLL_MS);
        status = await api("GET", resultUrl(current.id));
      }
      if (status.task_status !== "SUCCESS") {
        const error = status.error || {};
        throw new ApiError(0, error.code ?? null, error.message || `The generation ended ${status.task_status}.`);
      }
      const images = status.image_result || status.data || [];
      const url = images[0] && images[0].url;
      if (!url) throw new ApiError(0, null, "The server reported success but sent no image URL.");
      ui.progressBar.value = 100;
      ui.progressLabel.textContent = "Loading image…";
      await loadImage(url);
      const entry = { ...request, url, seconds: (performance.now() - started) / 1000 };
      addHistory(entry);
      showEntry(entry);
    } catch (err) {
      showAlert(err instanceof ApiError ? err : new ApiError(0, null, String(err)));
    } finally {
      task = null;
      hideProgress();
      if (ui.result.hidden) ui.placeholder.hidden = false;
      setBusy(false);
    }
  }

  // --- Prompt enhancement: review and edit the rewrite before generating ---------------------------

  async function enhance() {
    const prompt = ui.prompt.value;
    hideAlert();
    ui.enhance.disabled = true;
    ui.enhance.textContent = "Enhancing…";
    try {
      const answer = await api("POST", ENHANCE_URL, JSON.stringify({ prompt }));
      if (answer.revised_prompt === null) {
        throw new ApiError(0, null, `The prompt enhancer could not rewrite this prompt (${answer.fallback}); it is unchanged.`);
      }
      typedPrompt = prompt;
      ui.prompt.value = answer.revised_prompt;
      ui.enhanceNoteText.textContent = "Enhanced: review or edit it, then Generate.";
      ui.enhanceNote.hidden = false;
    } catch (err) {
      showAlert(err instanceof ApiError ? err : new ApiError(0, null, String(err)));
    } finally {
      ui.enhance.textContent = "Enhance prompt";
      validate();
    }
  }

  function undoEnhance() {
    if (typedPrompt !== null) ui.prompt.value = typedPrompt;
    typedPrompt = null;
    ui.enhanceNote.hidden = true;
    validate();
    ui.prompt.focus();
  }

  // --- Start --------------------------------------------------------------------------------------

  function fillSelect(select, options, selected) {
    select.replaceChildren(
      ...options.map(([value, label]) => {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = label;
        option.selected = value === selected;
        return option;
      }),
    );
  }

  function sizeLabel(size) {
    const [width, height] = size.split("x").map(Number);
    const d = gcd(width, height);
    return `${width}×${height} (${width / d}:${height / d})`;
  }

  function restoreHistory() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(HISTORY_STORAGE) || "[]");
      const valid = (entry) =>
        entry && ["url", "prompt", "size", "quality", "model"].every((name) => typeof entry[name] === "string");
      if (Array.isArray(saved)) history = saved.filter(valid).map((entry) => ({ seed: null, ...entry }));
    } catch {
      history = [];
    }
    renderHistory();
  }

  function applyConfig(loaded) {
    config = loaded;
    fillSelect(
      ui.model,
      config.models.map((code) => [code, code]),
      config.models[0],
    );
    const presets = config.recommended_sizes.map((size) => [size, sizeLabel(size)]);
    fillSelect(ui.size, [...presets, [CUSTOM, "Custom…"]], config.default_size);
    for (const input of [ui.width, ui.height]) {
      input.min = String(config.sizes.min);
      input.max = String(config.sizes.max);
      input.step = String(config.sizes.multiple);
    }
    showModelNote(config.model_note, config.example_prompts || []);
    ui.enhance.hidden = !config.enhancer;
    ui.authField.hidden = !config.auth_required;
    if (config.auth_required) ui.apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
    ui.status.textContent = config.auth_required ? "API key required" : "open mode · no key needed";
    ui.status.dataset.state = "ready";
    validate();
  }

  // A built-in model with a small world says what it draws; each example fills the prompt.
  function showModelNote(note, examples) {
    const box = $("model-note");
    if (!note) {
      box.hidden = true;
      return;
    }
    $("model-note-text").textContent = note;
    const list = $("example-prompts");
    list.replaceChildren(
      ...examples.map((text) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "example";
        button.textContent = text;
        button.addEventListener("click", () => {
          ui.prompt.value = text;
          validate();
          ui.prompt.focus();
        });
        return button;
      }),
    );
    box.hidden = false;
  }

  function wire() {
    ui.form.addEventListener("input", () => validate());
    ui.form.addEventListener("change", () => validate());
    let preset = null;
    ui.size.addEventListener("change", () => {
      const custom = ui.size.value === CUSTOM;
      ui.custom.hidden = !custom;
      if (!custom) preset = ui.size.value;
      else {
        // Start a custom size from the preset chosen before.
        [ui.width.value, ui.height.value] = (preset || config.default_size).split("x");
        ui.width.focus();
      }
      validate();
    });
    ui.apiKey.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, ui.apiKey.value.trim()));
    ui.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) ui.form.requestSubmit();
    });
    ui.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const request = validate();
      if (request && task === null) generate(request);
    });
    ui.cancel.addEventListener("click", () => {
      if (task) requestCancel(task);
    });
    ui.enhance.addEventListener("click", () => enhance());
    ui.enhanceUndo.addEventListener("click", () => undoEnhance());
  }

  async function start() {
    wire();
    restoreHistory();
    try {
      applyConfig(await api("GET", "playground/config.json"));
    } catch (err) {
      ui.status.textContent = "server unavailable";
      ui.status.dataset.state = "error";
      showAlert(err);
    }
  }

  start();
})();
