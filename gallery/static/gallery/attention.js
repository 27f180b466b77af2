// Image page: one small map per content word of the caption (the photo, dimmed where the model did
// not look and warmed where it did), as in the captioning tutorial's attention plot. Choosing a word
// lays its map over the large photo; the first word's map is shown at once. The attention is 64
// weights per word (an 8 x 8 grid, row by row); each map is stretched to its own range, from its
// least to its most attended cell, so that maps of different words differ visibly.
(function () {
  "use strict";
  var dataNode = document.getElementById("attention-data");
  var container = document.getElementById("attention-maps");
  var photo = document.getElementById("photo");
  var overlay = document.getElementById("photo-overlay");
  var label = document.getElementById("overlay-label");
  if (!dataNode || !container || !photo) return;
  var words = JSON.parse(dataNode.textContent) || [];
  var GRID = 8;

  // The 8 x 8 weights as a tiny canvas, scaled up smoothly when drawn over the photo.
  function heatCanvas(weights) {
    var max = Math.max.apply(null, weights);
    var min = Math.min.apply(null, weights);
    var range = max - min || 1;
    var cells = document.createElement("canvas");
    cells.width = GRID;
    cells.height = GRID;
    var ctx = cells.getContext("2d");
    var pixels = ctx.createImageData(GRID, GRID);
    for (var i = 0; i < GRID * GRID; i += 1) {
      var v = Math.max(0, ((weights[i] || 0) - min) / range);
      // Dark where unattended; a warm yellow-orange glow where attended.
      pixels.data[4 * i] = Math.round(255 * v);
      pixels.data[4 * i + 1] = Math.round(190 * v);
      pixels.data[4 * i + 2] = Math.round(40 * v);
      pixels.data[4 * i + 3] = Math.round(255 * (0.8 - 0.55 * v));
    }
    ctx.putImageData(pixels, 0, 0);
    return cells;
  }

  function drawMap(canvas, source, weights, withPhoto) {
    var ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (withPhoto) ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(heatCanvas(weights), 0, 0, canvas.width, canvas.height);
  }

  var buttons = [];
  var selected = -1;

  // The overlay covers the displayed photo (object-fit: contain keeps its aspect ratio).
  function drawOverlay() {
    var ctx = overlay.getContext("2d");
    var rect = photo.getBoundingClientRect();
    overlay.width = Math.round(rect.width);
    overlay.height = Math.round(rect.height);
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    label.hidden = selected < 0;
    if (selected < 0 || !photo.naturalWidth) return;
    var scale = Math.min(rect.width / photo.naturalWidth, rect.height / photo.naturalHeight);
    var area = document.createElement("canvas");
    area.width = Math.round(photo.naturalWidth * scale);
    area.height = Math.round(photo.naturalHeight * scale);
    drawMap(area, null, words[selected][1], false);
    ctx.drawImage(area, (rect.width - area.width) / 2, (rect.height - area.height) / 2);
    label.textContent = words[selected][0];
  }

  function select(index) {
    selected = selected === index ? -1 : index;
    buttons.forEach(function (b, i) { b.setAttribute("aria-pressed", String(i === selected)); });
    drawOverlay();
  }

  function build() {
    var thumb = new Image();
    thumb.onload = function () {
      var ratio = thumb.naturalHeight / thumb.naturalWidth;
      words.forEach(function (entry, index) {
        var button = document.createElement("button");
        button.type = "button";
        button.className = "attention-word";
        button.setAttribute("aria-pressed", "false");
        button.setAttribute("aria-label", "Show where the model looked for “" + entry[0] + "”");
        var canvas = document.createElement("canvas");
        canvas.width = 200;
        canvas.height = Math.round(200 * ratio);
        drawMap(canvas, thumb, entry[1], true);
        var word = document.createElement("span");
        word.textContent = entry[0];
        button.appendChild(canvas);
        button.appendChild(word);
        button.addEventListener("click", function () { select(index); });
        buttons.push(button);
        container.appendChild(button);
      });
      if (words.length) select(0);
    };
    thumb.src = container.dataset.thumbnail;
  }

  build();
  window.addEventListener("resize", drawOverlay);
  photo.addEventListener("load", drawOverlay);
}());
