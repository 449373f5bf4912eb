// MathJax 3 configuration for pymdownx.arithmatex (generic mode); the library itself is
// assets/mathjax/tex-svg-full.js, served from this site (no network needed).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
  svg: { fontCache: "global" },
};
