/* Loaded before the ipywidgets HTML manager on pages that hold widgets (nb_ipywidgets_js in
 * _config.yml), so that the static sliders work offline, from the book's own files. */
(function () {
  // 1. html-manager (embed-amd.js) loads its icon fonts from the folder of its AMD module, which
  //    RequireJS would place beside the page: map the module's folder to the vendored copy. (A
  //    global `require` object defined before require.js loads is RequireJS's initial config.)
  const here = document.currentScript.src; // .../_static/ddpm-widgets.js?v=...
  const htmlManager = new URL("vendor/html-manager", here).href;
  window.require = { paths: { "@jupyter-widgets/html-manager/dist": htmlManager } };
  window.__jupyter_widgets_assets_path__ = htmlManager + "/";

  // 2. ipywidgets 8 typesets widget labels with MathJax 2's API (MathJax.Hub.Queue), but the book
  //    loads MathJax 3, which has no Hub: translate the call. MathJax is loaded with "defer", so it
  //    exists by DOMContentLoaded; the widgets are rendered later, on "load".
  document.addEventListener("DOMContentLoaded", function () {
    const mathjax = window.MathJax;
    if (mathjax && mathjax.startup && !mathjax.Hub) {
      mathjax.Hub = {
        Queue: function (job) {
          const element = job[2]; // ["Typeset", MathJax.Hub, element]
          return mathjax.startup.promise.then(() => mathjax.typesetPromise([element]));
        },
      };
    }
  });
})();
