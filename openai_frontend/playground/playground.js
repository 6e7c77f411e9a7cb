// The playground's behaviour. It uses only the public API, exactly as any client would: the same endpoints and,
// when the server has API keys, the same `Authorization: Bearer <key>` header, with the key kept in this tab's
// sessionStorage (gone when the tab closes). Errors are shown as the API's own message, never as a trace.

const KEY_STORE = "triton-diffusion-api-key";
const API_ROOT = new URL("../", import.meta.url); // the server's root, wherever the page is mounted
const $ = (selector, root = document) => root.querySelector(selector);

/** A failure to show a person: its message is the API's `error.message` or a one-line reason. */
class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body?.error?.message) return body.error.message;
  } catch {
    // not OpenAI's error shape: fall back to the status line
  }
  return `the server answered ${response.status} ${response.statusText}`.trim();
}

/** fetch against the API, with the key; a non-2xx answer becomes an ApiError carrying the API's message. */
async function api(path, { json, form, method, signal } = {}) {
  const init = { method: method ?? (json || form ? "POST" : "GET"), headers: authHeaders(), signal };
  if (json) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(new URL(path, API_ROOT), init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`could not reach the server (${err.message})`);
  }
  if (!response.ok) {
    const message = await errorMessage(response);
    if (response.status === 401) showNotice(`${message}. Enter your API key above.`);
    throw new ApiError(message, response.status);
  }
  return response;
}

async function blobUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

function showNotice(message) {
  const notice = $("#notice");
  notice.textContent = message;
  notice.hidden = !message;
}

/** The form's filled-in fields: numbers as numbers, files as File, empty fields left out (server defaults). */
function formValues(form) {
  const values = {};
  for (const input of form.elements) {
    if (!input.name) continue;
    if (input.type === "file") {
      if (input.files.length) values[input.name] = input.files[0];
    } else if (input.type === "number") {
      if (input.value !== "") values[input.name] = input.valueAsNumber;
    } else if (input.value.trim() !== "") {
      values[input.name] = input.value.trim();
    }
  }
  return values;
}

function multipart(values) {
  const body = new FormData();
  for (const [name, value] of Object.entries(values)) body.append(name, value);
  return body;
}

/** Run a form's action with its button disabled; whatever fails is shown under the form (or in the notice at
 * the top, for the key's form) as one message. */
async function submitting(form, action) {
  const button = $("button[type=submit]", form);
  const error = $(".error", form) ?? $("#notice");
  error.hidden = true;
  button.disabled = true;
  try {
    await action(form);
  } catch (err) {
    if (err.name !== "AbortError") {
      error.textContent = err instanceof ApiError ? err.message : `something went wrong: ${err.message}`;
      error.hidden = false;
    }
  } finally {
    button.disabled = false;
  }
}

function onSubmit(selector, action) {
  $(selector).addEventListener("submit", (event) => {
    event.preventDefault();
    submitting(event.target, action);
  });
}

// --- models and the key ------------------------------------------------------------------------------------

async function loadModels() {
  const { data } = await (await api("v1/models")).json();
  for (const select of document.querySelectorAll("select[data-task]")) {
    const ids = data.filter((model) => model.task === select.dataset.task).map((model) => model.id);
    select.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (!ids.length) select.append(new Option("(none served)", ""));
  }
  showNotice("");
}

function startModels() {
  loadModels().catch((err) => err.status === 401 || showNotice(err.message)); // a 401 has asked for the key
}

onSubmit("#key-form", (form) => {
  sessionStorage.setItem(KEY_STORE, form.elements.key.value.trim());
  form.elements.key.value = "";
  return loadModels();
});

for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll("[role=tab]")) {
      other.setAttribute("aria-selected", String(other === tab));
      $(`#${other.dataset.panel}`).hidden = other !== tab;
    }
    if (tab.dataset.panel === "video") refreshJobs().catch((err) => showNotice(err.message));
  });
}

// --- images --------------------------------------------------------------------------------------------------

let imageUrls = [];

function base64Blob(b64, type) {
  return new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type });
}

function imageFigure(item, format) {
  const url = URL.createObjectURL(base64Blob(item.b64_json, `image/${format}`));
  imageUrls.push(url);
  const figure = document.createElement("figure");
  const img = Object.assign(document.createElement("img"), { src: url, alt: `seed ${item.seed}` });
  const link = Object.assign(document.createElement("a"), { href: url, download: `seed-${item.seed}.${format}` });
  link.textContent = "Download";
  const caption = document.createElement("figcaption");
  caption.append(`seed ${item.seed} `, link);
  figure.append(img, caption);
  return figure;
}

onSubmit("#image-form", async (form) => {
  const values = { ...formValues(form), response_format: "b64_json" };
  const edit = "image" in values;
  const request = edit ? { form: multipart(values) } : { json: values };
  const body = await (await api(edit ? "v1/images/edits" : "v1/images/generations", request)).json();
  imageUrls.forEach(URL.revokeObjectURL);
  imageUrls = [];
  $("#image-grid").replaceChildren(...body.data.map((item) => imageFigure(item, body.output_format)));
});

// --- video ---------------------------------------------------------------------------------------------------

const PENDING = ["queued", "in_progress"];
let shownJob = null; // the job the panel follows; another one replaces it
let videoUrls = [];

function showJobStatus(job) {
  const view = $("#video-job");
  view.hidden = false;
  $(".status", view).textContent = `${job.id}: ${job.status.replace("_", " ")}, ${job.progress}%`;
  $("progress", view).value = job.progress;
}

async function showVideo(job) {
  const view = $("#video-job");
  const base = `v1/videos/${job.id}/content`;
  const [video, thumbnail, spritesheet] = await Promise.all(
    ["video", "thumbnail", "spritesheet"].map((variant) => blobUrl(`${base}?variant=${variant}`)),
  );
  const urls = [video, thumbnail, spritesheet];
  if (shownJob !== job.id) return urls.forEach(URL.revokeObjectURL); // another job was chosen meanwhile
  videoUrls.forEach(URL.revokeObjectURL);
  videoUrls = urls;
  $("video", view).src = video;
  $(".thumbnail", view).src = thumbnail;
  $(".spritesheet", view).src = spritesheet;
  Object.assign($("a.download", view), { href: video, download: `${job.id}.mp4` });
}

/** Poll the job as the API says (openai-poll-after-ms) until it ends, then play it. */
async function followJob(job, pollMs = 1000) {
  shownJob = job.id;
  $("#video-job video").removeAttribute("src");
  while (shownJob === job.id) {
    showJobStatus(job);
    if (!PENDING.includes(job.status)) break;
    await new Promise((resolve) => setTimeout(resolve, pollMs));
    const response = await api(`v1/videos/${job.id}`);
    pollMs = Number(response.headers.get("openai-poll-after-ms")) || pollMs;
    job = await response.json();
  }
  if (shownJob !== job.id) return;
  if (job.status === "failed") throw new ApiError(job.error?.message ?? "the video failed");
  await showVideo(job);
}

function jobRow(job) {
  const row = document.createElement("tr");
  row.dataset.id = job.id;
  const created = new Date(job.created_at * 1000).toLocaleTimeString();
  const status = PENDING.includes(job.status) ? `${job.status} ${job.progress}%` : job.status;
  for (const text of [job.prompt ?? job.id, job.model, job.size, status, created]) {
    row.insertCell().textContent = text;
  }
  const actions = row.insertCell();
  const show = Object.assign(document.createElement("button"), { type: "button", textContent: "Show" });
  show.addEventListener("click", () => submitting($("#video-form"), () => followJob(job)));
  const remove = Object.assign(document.createElement("button"), { type: "button", textContent: "Delete" });
  remove.addEventListener("click", () => submitting($("#video-form"), () => deleteJob(job.id)));
  actions.append(show, remove);
  return row;
}

async function deleteJob(id) {
  await api(`v1/videos/${id}`, { method: "DELETE" });
  if (shownJob === id) {
    shownJob = null;
    $("#video-job").hidden = true;
  }
  await refreshJobs();
}

async function refreshJobs() {
  const { data } = await (await api("v1/videos?limit=20")).json();
  $("#video-jobs tbody").replaceChildren(...data.map(jobRow));
}

onSubmit("#video-form", async (form) => {
  const response = await api("v1/videos", { form: multipart(formValues(form)) });
  const job = await response.json();
  await refreshJobs();
  await followJob(job, Number(response.headers.get("openai-poll-after-ms")) || undefined);
  await refreshJobs();
});
$("#video-refresh").addEventListener("click", () => submitting($("#video-form"), refreshJobs));

// --- chat ----------------------------------------------------------------------------------------------------

const conversation = []; // what the model is sent: every finished turn
let generation = null; // the AbortController of the answer being streamed

function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = role;
  item.append(Object.assign(document.createElement("p"), { textContent: text }));
  $("#chat-log").append(item);
  return item;
}

/** Server-sent events from a fetch body: {event, data} for each blank-line-terminated event. */
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const event = { event: "message", data: "" };
      for (const line of buffer.slice(0, end).split("\n")) {
        if (line.startsWith("event:")) event.event = line.slice(6).trim();
        if (line.startsWith("data:")) event.data += line.slice(5).trimStart();
      }
      buffer = buffer.slice(end + 2);
      yield event;
    }
  }
}

/** Stream one answer; each decoded block becomes its own span, so blocks appear as the model decides them. */
async function streamAnswer(request, answer) {
  const response = await api("v1/chat/completions", { json: request, signal: generation.signal });
  const text = $("p", answer);
  let finish = null;
  for await (const { event, data } of serverSentEvents(response.body)) {
    if (event === "error") throw new ApiError(JSON.parse(data).error?.message ?? "the generation failed");
    if (data === "[DONE]") break;
    const choice = JSON.parse(data).choices?.[0];
    if (choice?.delta?.content) {
      const block = Object.assign(document.createElement("span"), { className: "block" });
      block.textContent = choice.delta.content;
      text.append(block);
    }
    finish = choice?.finish_reason ?? finish;
  }
  return finish;
}

onSubmit("#chat-form", async (form) => {
  const { content, ...settings } = formValues(form);
  form.elements.content.value = "";
  conversation.push({ role: "user", content });
  addMessage("user", content);
  const answer = addMessage("assistant", "");
  const note = (text) => answer.append(Object.assign(document.createElement("small"), { textContent: text }));
  answer.classList.add("streaming");
  generation = new AbortController();
  $("#chat-stop").disabled = false;
  try {
    const finish = await streamAnswer({ ...settings, messages: conversation, stream: true }, answer);
    note(`finished (${finish ?? "unknown"})`);
  } catch (err) {
    note(err.name === "AbortError" ? "stopped" : "failed");
    throw err;
  } finally {
    const text = $("p", answer).textContent;
    if (text) conversation.push({ role: "assistant", content: text }); // what was said, even if stopped
    answer.classList.remove("streaming");
    generation = null;
    $("#chat-stop").disabled = true;
  }
});

$("#chat-stop").addEventListener("click", () => generation?.abort()); // closing the stream cancels on the server
$("#chat-clear").addEventListener("click", () => {
  generation?.abort();
  conversation.length = 0;
  $("#chat-log").replaceChildren();
});

startModels();
