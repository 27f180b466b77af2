// Upload page: drag and drop or pick photos; each file goes to the JSON API in its own request
// with its own progress bar and its own error, then is watched until its caption arrives.
// Without JavaScript the form posts all the files to the page itself.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) return;
  document.documentElement.classList.add("js");

  var input = form.querySelector('input[type="file"]');
  var dropzone = document.getElementById("dropzone");
  var list = document.getElementById("upload-list");
  var csrfToken = form.querySelector('input[name="csrfmiddlewaretoken"]').value;
  var apiUrl = form.dataset.api;
  var PARALLEL = 3;
  var POLL_MS = 1500;
  var POLL_LIMIT = 200;
  var queue = [];
  var running = 0;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A name is kept whole: a slash (a path separator to the server) becomes "_", so that a name
  // like "<script>alert(1)</script>.jpg" is not cut down to "script>.jpg".
  function safeName(name) {
    return name.replace(/[\/\\]/g, "_");
  }

  function addRow(file) {
    var row = el("li", "upload-item");
    var thumb = el("img", "upload-thumb");
    thumb.alt = "";
    thumb.src = URL.createObjectURL(file);
    thumb.onload = thumb.onerror = function () { URL.revokeObjectURL(thumb.src); };
    row.appendChild(thumb);
    row.appendChild(el("span", "upload-name", file.name));
    var progress = el("progress");
    progress.max = 1;
    progress.value = 0;
    progress.setAttribute("aria-label", "Upload progress of " + file.name);
    row.appendChild(progress);
    var status = el("span", "upload-status", "Waiting…");
    row.appendChild(status);
    list.insertBefore(row, list.firstChild);
    return { row: row, progress: progress, status: status };
  }

  function fail(ui, message) {
    ui.row.className = "upload-item is-error";
    ui.progress.remove();
    ui.status.textContent = message;
    ui.status.setAttribute("role", "alert");
  }

  function showImage(ui, image, created) {
    ui.status.textContent = "";
    var link = el("a", null, "view");
    link.href = image.page_url;
    if (image.status === "done" && image.caption) {
      ui.row.className = "upload-item is-done";
      ui.status.appendChild(el("span", "caption", "“" + image.caption.text + "” – "));
    } else if (image.status === "failed") {
      ui.row.className = "upload-item is-error";
      ui.status.appendChild(document.createTextNode("Stored, but captioning failed: " + image.error + " – "));
    } else {
      ui.status.appendChild(document.createTextNode((created ? "Uploaded" : "Already in the gallery") + "; captioning… – "));
    }
    ui.status.appendChild(link);
  }

  function watch(ui, image, created, round) {
    showImage(ui, image, created);
    if (image.status === "done" || image.status === "failed" || round >= POLL_LIMIT) return;
    window.setTimeout(function () {
      var xhr = new XMLHttpRequest();
      xhr.open("GET", image.api_url);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.responseType = "json";
      xhr.onload = function () {
        watch(ui, xhr.status === 200 && xhr.response ? xhr.response : image, created, round + 1);
      };
      xhr.onerror = function () { watch(ui, image, created, round + 1); };
      xhr.send();
    }, POLL_MS);
  }

  function send(job) {
    var ui = job.ui;
    running += 1;
    ui.status.textContent = "Uploading…";
    var body = new FormData();
    body.append("file", job.file, safeName(job.file.name));
    var xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl);
    xhr.setRequestHeader("X-CSRFToken", csrfToken);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.responseType = "json";
    xhr.upload.onprogress = function (event) {
      if (event.lengthComputable) ui.progress.value = event.loaded / event.total;
    };
    xhr.onload = function () {
      var data = xhr.response || {};
      if (xhr.status === 200 || xhr.status === 201) {
        ui.progress.remove();
        watch(ui, data.image, data.created, 0);
      } else if (xhr.status === 401 || xhr.status === 403) {
        fail(ui, (data.error || "Not allowed.") + " Reload the page and log in again.");
      } else {
        fail(ui, data.error || "The server refused this file (HTTP " + xhr.status + ").");
      }
    };
    xhr.onerror = function () { fail(ui, "The upload failed: the server could not be reached."); };
    xhr.onloadend = function () { running -= 1; next(); };
    xhr.send(body);
  }

  function next() {
    while (running < PARALLEL && queue.length) send(queue.shift());
  }

  function addFiles(files) {
    for (var i = 0; i < files.length; i += 1) queue.push({ file: files[i], ui: addRow(files[i]) });
    next();
  }

  input.addEventListener("change", function () {
    addFiles(input.files);
    input.value = "";
  });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    addFiles(input.files);
    input.value = "";
  });
  window.acceptDroppedFiles(dropzone, addFiles);
}());
