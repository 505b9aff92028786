// Swagger UI on this server's /openapi.json, from files this server serves: no CDN, and no
// inline script (the page's Content-Security-Policy allows none).
"use strict";

window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  // never send the schema to the public validator (Swagger UI's default for non-local URLs)
  validatorUrl: null,
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
});
