// Build src/dni.js into one minified self-running file, dni.min.js, and check its size.
//
//   node build.mjs           write dni.min.js, print its gzip size, exit 1 if over budget
//   node build.mjs --check   build in memory; also exit 1 if dni.min.js differs from it
//
// The built file is committed, so that `pip install .` needs no npm.
import {readFileSync, writeFileSync, existsSync} from "node:fs";
import {gzipSync} from "node:zlib";
import {fileURLToPath} from "node:url";
import {dirname, join} from "node:path";
import * as esbuild from "esbuild";

const BUDGET = 2560; // bytes, gzip level 9
const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dni.min.js");
const check = process.argv.includes("--check");

const result = await esbuild.build({
  entryPoints: [join(here, "src", "dni.js")],
  bundle: false,
  minify: true,
  legalComments: "none",
  target: ["es2019", "chrome80", "firefox78", "safari13.1"],
  charset: "utf8",
  write: false,
});
const code = result.outputFiles[0].text;
const gz = gzipSync(code, {level: 9}).length;
console.log(`dni.min.js: ${code.length} bytes, ${gz} bytes gzip (budget ${BUDGET}, esbuild ${esbuild.version})`);

let failed = false;
if (gz > BUDGET) {
  console.error(`over budget by ${gz - BUDGET} bytes gzip`);
  failed = true;
}
if (check) {
  const committed = existsSync(out) ? readFileSync(out, "utf8") : null;
  if (committed !== code) {
    console.error("dni.min.js is not the build of src/dni.js: run `node build.mjs` and commit it");
    failed = true;
  }
} else {
  writeFileSync(out, code);
}
process.exit(failed ? 1 : 0);
