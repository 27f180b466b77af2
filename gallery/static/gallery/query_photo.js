// Search by photo: drop a photo on the zone (or pick one) and it is described and searched at once,
// as on the upload page. Without JavaScript the plain form works.
(function () {
  "use strict";
  var dropzone = document.getElementById("dropzone");
  var form = dropzone && dropzone.closest("form");
  if (!form) return;
  document.documentElement.classList.add("js");
  var input = form.querySelector('input[type="file"]');

  function submitWith(files) {
    if (!files || !files.length) return;
    if (files !== input.files) {
      var transfer = new DataTransfer();
      transfer.items.add(files[0]);
      input.files = transfer.files;
    }
    dropzone.classList.add("is-busy");
    dropzone.querySelector(".dropzone-title").textContent = "Describing " + files[0].name + "…";
    form.submit();
  }

  input.addEventListener("change", function () { submitWith(input.files); });
  window.acceptDroppedFiles(dropzone, submitWith);
}());
