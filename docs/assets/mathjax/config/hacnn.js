// hacnn_nbdev: MathJax's HTML-CSS output with the STIX-Web fonts of this folder; nothing from another host.
// (NativeMML, which Chromium would otherwise get, wants TeX fonts this package does not ship; and the
// font-detection face `MathJax_Blank` points at about:blank, which Chromium reports as a CORS error.)
// Checked in Chromium by tools/test_docs.py: no request fails, no console error, all $...$ typeset.
MathJax.Hub.Config({
  MMLorHTML: {prefer: "HTML"},
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null,
               linebreaks: {automatic: true},
               styles: {"@font-face": {"font-family": "MathJax_Blank", src: "local('MathJax_Blank')"}}},
  // the hidden assistive MathML copy names TeX web fonts (not shipped): let it use the system's fonts
  NativeMML: {styles: {
    "@font-face /*1*/": {"font-family": "MathJax_Caligraphic-WEB", src: "local('MathJax_Caligraphic')"},
    "@font-face /*2*/": {"font-family": "MathJax_Caligraphic-WEB", "font-weight": "bold", src: "local('MathJax_Caligraphic')"},
    "@font-face /*3*/": {"font-family": "MathJax_AMS-WEB", src: "local('MathJax_AMS')"},
    "@font-face /*4*/": {"font-family": "MathJax_Script-WEB", src: "local('MathJax_Script')"},
    "@font-face /*5*/": {"font-family": "MathJax_Fraktur-WEB", src: "local('MathJax_Fraktur')"},
    "@font-face /*6*/": {"font-family": "MathJax_Fraktur-WEB", "font-weight": "bold", src: "local('MathJax_Fraktur')"}}},
  menuSettings: {zoom: "None"}
});
MathJax.Ajax.loadComplete("[MathJax]/config/hacnn.js");
