// The chat page's logic: the conversation, the settings, and the calls to the OpenAI API beside the page
// (GET models, POST chat/completions with stream: true, read as server-sent events). It knows nothing of the
// server behind the API. Model output is only ever inserted as text (textContent / text nodes), never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model"), newChat: $("new-chat"), system: $("system"), temperature: $("temperature"),
    topP: $("top-p"), maxTokens: $("max-tokens"), apiKey: $("api-key"), messages: $("messages"),
    error: $("error"), composer: $("composer"), input: $("input"), send: $("send"), stop: $("stop"),
  };
  const meta = document.querySelector('meta[name="gptkit-api-base"]');
  const apiBase = ((meta && meta.content) || "v1").replace(/\/+$/, "");
  // One conversation per page path and origin; the API key only in this tab (sessionStorage), never on disk.
  const storeKey = "gptkit-chat:" + location.pathname;
  const keyKey = "gptkit-chat-key:" + location.pathname;
  const settingFields = { system: el.system, temperature: el.temperature, top_p: el.topP, max_tokens: el.maxTokens };

  let history = []; // the turns sent each time: {role: "user" | "assistant", content: string}
  let savedModel = "";
  let controller = null; // the AbortController of the reply being streamed, if any
  let conversation = 0; // counts New chat presses: a reply that outlives its conversation is dropped

  // --- storage ------------------------------------------------------------------------------------------
  function restore() {
    let saved = {};
    try { saved = JSON.parse(localStorage.getItem(storeKey) || "{}") || {}; } catch (e) { saved = {}; }
    if (Array.isArray(saved.history)) {
      history = saved.history.filter((m) => m && (m.role === "user" || m.role === "assistant")
                                            && typeof m.content === "string");
    }
    const settings = saved.settings || {};
    for (const [name, field] of Object.entries(settingFields)) {
      if (typeof settings[name] === "string") field.value = settings[name];
    }
    savedModel = typeof settings.model === "string" ? settings.model : "";
    try { el.apiKey.value = sessionStorage.getItem(keyKey) || ""; } catch (e) { /* storage disabled */ }
  }

  function save() {
    const settings = { model: el.model.value || savedModel };
    for (const [name, field] of Object.entries(settingFields)) settings[name] = field.value;
    try { localStorage.setItem(storeKey, JSON.stringify({ history, settings })); } catch (e) { /* full or off */ }
  }

  // --- the page -----------------------------------------------------------------------------------------
  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
  }

  function bubble(role, text) {
    const box = document.createElement("div");
    box.className = "message " + role;
    box.dataset.role = role;
    const who = document.createElement("div");
    who.className = "role";
    who.textContent = role === "user" ? "You" : "Assistant";
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = text;
    box.append(who, content);
    el.messages.append(box);
    return box;
  }

  function note(box, text) {
    const line = document.createElement("div");
    line.className = "note";
    line.textContent = text;
    box.append(line);
  }

  function render() {
    el.messages.replaceChildren();
    for (const m of history) bubble(m.role, m.content).dataset.state = "done";
    scrollDown(true);
  }

  function scrollDown(always) {
    const box = el.messages;
    if (always || box.scrollHeight - box.scrollTop - box.clientHeight < 80) box.scrollTop = box.scrollHeight;
  }

  function setBusy(busy) {
    el.send.disabled = busy;
    el.stop.disabled = !busy;
    document.body.classList.toggle("busy", busy);
  }

  // --- the API ------------------------------------------------------------------------------------------
  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const key = el.apiKey.value.trim();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  // The message of an error response: OpenAI's {"error": {"message"}}, else the start of the body.
  async function errorOf(response) {
    const text = await response.text().catch(() => "");
    let message = "";
    try { message = JSON.parse(text).error.message || ""; } catch (e) { message = ""; }
    message = message || text.slice(0, 300) || response.statusText;
    const hint = response.status === 401 ? " (type the server's key in the API key field)" : "";
    return `Error ${response.status}: ${message}${hint}`;
  }

  class ServerError extends Error {}

  let modelsCall = 0; // only the latest GET models may update the page (the key may change meanwhile)
  async function loadModels() {
    const call = ++modelsCall;
    let response, body;
    try {
      response = await fetch(`${apiBase}/models`, { headers: headers(false) });
      body = response.ok ? await response.json().catch(() => ({})) : await errorOf(response);
    } catch (e) {
      body = `Cannot reach the server: ${e.message}`;
    }
    if (call !== modelsCall) return;
    if (typeof body === "string") {
      showError(body);
      return;
    }
    const ids = (Array.isArray(body.data) ? body.data : []).map((m) => String(m.id));
    const wanted = el.model.value || savedModel;
    el.model.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(wanted)) el.model.value = wanted;
    el.model.disabled = ids.length === 0;
    clearError();
  }

  // The sampling settings that are filled in (blank fields: the server's default).
  function sampling() {
    const out = {};
    for (const [name, field, parse] of [["temperature", el.temperature, Number], ["top_p", el.topP, Number],
                                        ["max_tokens", el.maxTokens, (v) => Number.parseInt(v, 10)]]) {
      const raw = field.value.trim();
      if (raw === "") continue;
      const value = parse(raw);
      if (!Number.isFinite(value)) throw new ServerError(`${name} must be a number, got "${raw}"`);
      out[name] = value;
    }
    return out;
  }

  // Read a text/event-stream body, calling onData(payload) for each event's data until [DONE]. However it ends,
  // the body is then cancelled, so a reply given up on (an error event) does not hold the connection open.
  async function readEvents(response, onData) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { done, value } = await reader.read();
        buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
        const events = buffer.split(/\r?\n\r?\n/);
        buffer = done ? "" : events.pop();
        for (const event of events) {
          const data = event.split(/\r?\n/).filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
          if (data === "") continue; // a comment or keep-alive
          if (data === "[DONE]") return;
          onData(data);
        }
        if (done) throw new ServerError("the server closed the stream before it finished");
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  async function send() {
    const text = el.input.value;
    if (!text.trim() || controller) return;
    clearError();
    let params;
    try { params = sampling(); } catch (e) { showError(e.message); return; }
    history.push({ role: "user", content: text });
    el.input.value = "";
    save();
    const userBox = bubble("user", text);
    userBox.dataset.state = "done";
    const box = bubble("assistant", "");
    const content = box.querySelector(".content");
    box.dataset.state = "streaming";
    box.dataset.chunks = "0";
    scrollDown(true);

    const system = el.system.value;
    const body = { messages: [...(system.trim() ? [{ role: "system", content: system }] : []), ...history],
                   stream: true, ...params };
    if (el.model.value) body.model = el.model.value;
    controller = new AbortController();
    const turnOf = conversation;
    setBusy(true);
    let reply = "", finish = null, failure = null, stopped = false;
    const append = (piece) => {
      reply += piece;
      content.append(piece); // a text node: model output is never parsed as HTML
      box.dataset.chunks = String(Number(box.dataset.chunks) + 1);
      scrollDown(false);
    };
    try {
      const response = await fetch(`${apiBase}/chat/completions`, {
        method: "POST", headers: headers(true), body: JSON.stringify(body), signal: controller.signal });
      if (!response.ok) throw new ServerError(await errorOf(response));
      if (!(response.headers.get("content-type") || "").includes("text/event-stream")) {
        // A server that answered without streaming: take the whole reply.
        const whole = await response.json();
        const choice = (whole.choices || [])[0] || {};
        append(String((choice.message && choice.message.content) || ""));
        finish = choice.finish_reason || null;
      } else {
        await readEvents(response, (data) => {
          let chunk;
          try {
            chunk = JSON.parse(data);
          } catch (e) {
            throw new ServerError(`a stream event is not JSON: ${data.slice(0, 200)}`);
          }
          if (chunk.error) throw new ServerError(`Error: ${chunk.error.message || JSON.stringify(chunk.error)}`);
          for (const choice of chunk.choices || []) {
            if ((choice.index || 0) !== 0) continue;
            const piece = choice.delta && choice.delta.content;
            if (piece) append(piece);
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        });
      }
    } catch (e) {
      if (e.name === "AbortError") stopped = true;
      else failure = e instanceof ServerError ? e.message : `Request failed: ${e.message}`;
    } finally {
      controller = null;
      setBusy(false);
    }
    if (turnOf !== conversation) return; // New chat was pressed meanwhile: this turn is gone

    if (failure !== null) {
      // The turn failed: it leaves the conversation, and the message goes back to the input box to retry.
      history.pop();
      box.dataset.state = "error";
      userBox.dataset.state = "error";
      userBox.classList.add("failed");
      box.classList.add("failed");
      if (!el.input.value) el.input.value = text;
      showError(failure);
    } else {
      // A stopped reply stays, as far as it got (as in `gptkit chat` after Ctrl-C).
      history.push({ role: "assistant", content: reply });
      box.dataset.state = stopped ? "stopped" : "done";
      if (finish) box.dataset.finish = finish;
      if (stopped) note(box, "(stopped)");
      else if (finish === "length") note(box, "(cut off at max_tokens)");
      else if (finish === "content_filter") note(box, "(stopped by the content filter)");
    }
    save();
    scrollDown(false);
    el.input.focus();
  }

  // --- events -------------------------------------------------------------------------------------------
  el.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
  el.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  el.stop.addEventListener("click", () => { if (controller) controller.abort(); });
  el.newChat.addEventListener("click", () => {
    if (controller) controller.abort();
    conversation += 1;
    history = [];
    save();
    render();
    clearError();
    el.input.focus();
  });
  for (const field of [...Object.values(settingFields), el.model]) field.addEventListener("change", save);
  el.system.addEventListener("input", save);
  el.apiKey.addEventListener("change", () => {
    try { sessionStorage.setItem(keyKey, el.apiKey.value.trim()); } catch (e) { /* storage disabled */ }
    loadModels();
  });

  restore();
  render();
  setBusy(false);
  loadModels();
  el.input.focus();
})();
