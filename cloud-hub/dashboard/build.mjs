// Builds the dashboard into the directory given (default dist/): app.js
// (the ES modules in src/ and uPlot, bundled), app.css (ours and uPlot's)
// and index.html. Deterministic: the same sources and package-lock give
// the same bytes, which the hub's dist test checks.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? join(here, "dist");
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(here, "src/main.js")],
  bundle: true,
  format: "esm",
  target: "es2020",
  minify: true,
  legalComments: "inline",
  outfile: join(out, "app.js"),
  logLevel: "warning",
});
const css = [
  readFileSync(join(here, "node_modules/uplot/dist/uPlot.min.css"), "utf8"),
  readFileSync(join(here, "src/style.css"), "utf8"),
].join("\n");
writeFileSync(join(out, "app.css"), css);
copyFileSync(join(here, "src/index.html"), join(out, "index.html"));
console.log(`dashboard built into ${out}`);
