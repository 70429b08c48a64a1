/* Each time on a console page is the debtor's (with its offset, its zone in the title):
   show the reader's own time beside it. A static file so that pages can forbid inline
   scripts (Content-Security-Policy script-src 'self'); the words come from the page. */
(function () {
  var body = document.body;
  var fmt = new Intl.DateTimeFormat(document.documentElement.lang, {year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", hour12: false, timeZoneName: "short"});
  var mine = Intl.DateTimeFormat().resolvedOptions().timeZone;
  var yours = body.getAttribute("data-your-time") || "your time", you = body.getAttribute("data-you") || "you";
  document.querySelectorAll("time[datetime]").forEach(function (t) {
    var d = new Date(t.getAttribute("datetime")), zone = t.title;
    if (isNaN(d)) return;
    t.title = zone + " · " + yours + ": " + fmt.format(d);
    if (zone && zone !== mine) t.setAttribute("data-mine", you + ": " + fmt.format(d));
  });
})();
