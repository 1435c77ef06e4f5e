// The API reference: Swagger UI from the vendored bundle, started here (no inline script).
import {navigation, takeToken, token} from "./common.js";

takeToken();
navigation();
// eslint-disable-next-line no-undef
const ui = window.SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  layout: "BaseLayout",
  validatorUrl: null,  // the public validator would be a request leaving the collector
  presets: [window.SwaggerUIBundle.presets.apis],
  // "Try it out" carries the page's token unless the user authorised with another one.
  requestInterceptor: (request) => {
    const t = token();
    if (t && !request.headers.Authorization) request.headers.Authorization = "Bearer " + t;
    return request;
  },
  onComplete: () => { document.body.dataset.docs = "ready"; },
});
window.ui = ui;
