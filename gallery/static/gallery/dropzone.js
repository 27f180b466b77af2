// A drop zone for photos, shared by the upload page and search by photo: highlighted while a file
// is dragged over it, it hands the dropped files to `onFiles`. A file dropped next to the zone
// must not navigate away from the page.
window.acceptDroppedFiles = function (dropzone, onFiles) {
  "use strict";
  ["dragenter", "dragover"].forEach(function (type) {
    dropzone.addEventListener(type, function (event) {
      event.preventDefault();
      dropzone.classList.add("is-over");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    dropzone.addEventListener(type, function (event) {
      event.preventDefault();
      dropzone.classList.remove("is-over");
    });
  });
  dropzone.addEventListener("drop", function (event) {
    if (event.dataTransfer && event.dataTransfer.files.length) onFiles(event.dataTransfer.files);
  });
  window.addEventListener("dragover", function (event) { event.preventDefault(); });
  window.addEventListener("drop", function (event) { event.preventDefault(); });
};
